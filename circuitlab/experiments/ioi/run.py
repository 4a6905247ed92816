"""The IOI experiment (Wang et al. 2022): load the model (offline by default), find and evaluate its IOI circuit,
judge the claims, write OUT/results.json."""

from __future__ import annotations

import time
from pathlib import Path

from circuitlab.experiments.ioi.analysis import analyze_ioi
from circuitlab.experiments.ioi.claims import ioi_claims
from circuitlab.experiments.ioi.presets import DEFAULT_MODEL, model_source
from circuitlab.experiments.ioi.results import IOIResults
from circuitlab.model.pretrained import load_model
from circuitlab.training.presets import ExperimentPreset


def is_gpt2_small(model) -> bool:
    cfg = model.cfg
    arch = str(getattr(cfg, "original_architecture", "") or getattr(cfg, "architecture", ""))
    return "GPT2" in arch and (int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_model)) == (12, 12, 768) and \
        int(cfg.d_vocab) == 50257


def bos_for(model) -> int | None:
    """The BOS the prompts start with: GPT-2's <|endoftext|> as in the paper's code; otherwise the one the model's
    tokenizer adds itself (none for SmolLM2, whose <|im_start|> marks a chat turn)."""
    tok = model.tokenizer
    arch = str(getattr(model.cfg, "original_architecture", "") or "")
    if "GPT2" in arch:
        return tok.bos_token_id
    with_special = tok.encode("a")
    plain = tok.encode("a", add_special_tokens=False)
    return with_special[0] if len(with_special) > len(plain) and tok.bos_token_id == with_special[0] else None


def run_ioi_experiment(preset: ExperimentPreset, out: Path | str, model: str = DEFAULT_MODEL,
                       log=print) -> IOIResults:
    out = Path(out)
    t0 = time.perf_counter()
    source, about = model_source(model)
    log(f"loading {model} ({source})")
    bridge = load_model(source)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = analyze_ioi(bridge, bridge.tokenizer, model, about, preset.settings, preset.name,
                         gpt2_small=is_gpt2_small(bridge), bos=bos_for(bridge), log=log)
    result.claims = ioi_claims(result)
    result.seconds = {"load": round(load_s, 1), **result.seconds, "total": round(time.perf_counter() - t0 + load_s, 1)}
    result.save(out / "results.json")
    return result

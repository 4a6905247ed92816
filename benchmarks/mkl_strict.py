"""MKL's strict CNR mode (`circuitlab.mkl`): what it costs the training steps, and whether it makes them
thread-invariant.

MKL reads MKL_CBWR once per process, so the two modes cannot alternate inside one: this script starts a child
process per round, alternating MKL_CBWR=AUTO (MKL's default) and AUTO,STRICT (what circuitlab sets on Intel CPUs).
Each child times the LM fast path's training step (the attn2 preset, batch 8, a fresh corpus batch per step, as
`train_throughput.py` does) and the grokking step (the paper's settings, full batch), and checks
`grokking.run.thread_invariant` (1 thread against all). The parent prints medians and ratios (strict / default) and
writes JSON to benchmarks/results/. On a CPU where circuitlab leaves MKL alone (AMD) the numbers still compare the
two modes, but circuitlab does not use the strict one there.

    .venv/bin/python benchmarks/mkl_strict.py [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = {"default": "AUTO", "strict": "AUTO,STRICT"}


def child(seconds: float) -> dict:
    import torch

    from circuitlab.data import load_corpus, prepare_tokens
    from circuitlab.experiments.grokking import PRESETS as GROKKING
    from circuitlab.experiments.grokking.run import thread_invariant
    from circuitlab.model import ModelConfig, Transformer, matmul
    from circuitlab.training import ModularAdditionTask, get_preset
    from circuitlab.training.allocator import keep_freed_memory
    from circuitlab.training.config import TrainConfig
    from circuitlab.training.loop import make_optimizer
    from train_throughput import Stream, step_fn, time_round

    keep_freed_memory()
    torch.manual_seed(0)
    out = {"MKL_CBWR": os.environ.get("MKL_CBWR"), "threads": torch.get_num_threads(), "backend": matmul.backend(),
           "cpu": matmul.cpu_name()}
    cfg = ModelConfig(**get_preset("attn2").model)
    lm = Transformer(cfg)
    stream = Stream(prepare_tokens(load_corpus("stdlib"), cfg.d_vocab).train, 8, cfg.n_ctx, "cpu")
    step = step_fn(lm, lambda t: lm(t, return_type="loss"), make_optimizer(lm, TrainConfig(lr=1e-3)))
    for _ in range(3):
        step(stream.next())
    out["lm_tokens_per_s"] = time_round(step, stream, seconds)

    g = GROKKING["paper"].models["grokking"]
    m, t = g.configs()
    task = ModularAdditionTask(**g.task)
    task.prepare(m, t, torch.device("cpu"))
    net = Transformer(m)
    opt = make_optimizer(net, t)

    def epoch(k: int) -> None:
        task.loss(net, task.batch(k)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for k in range(3):  # warm-up
        epoch(k)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        epoch(3 + n)
        n += 1
    out["grokking_epochs_per_s"] = n / (time.perf_counter() - t0)
    out["thread_invariant"] = thread_invariant(GROKKING["paper"], max(2, torch.get_num_threads()))  # 1 vs 2 at least
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of one timed round of each step")
    ap.add_argument("--out", default="benchmarks/results/mkl_strict.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.seconds)))
        return
    runs: dict[str, list[dict]] = {k: [] for k in MODES}
    for r in range(args.rounds):
        for mode, value in MODES.items():
            env = os.environ | {"MKL_CBWR": value}
            done = subprocess.run([sys.executable, __file__, "--child", "--seconds", str(args.seconds)], env=env,
                                  capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            x = runs[mode][-1]
            print(f"round {r + 1} {mode:8s} (MKL_CBWR={value}): LM {x['lm_tokens_per_s']:,.0f} tokens/s, grokking "
                  f"{x['grokking_epochs_per_s']:.1f} epochs/s, thread-invariant {x['thread_invariant']}", flush=True)
    result = {"what": "MKL's default vs strict CNR mode, a child process per round, alternating", "rounds": args.rounds,
              "seconds": args.seconds, "cpu": runs["default"][0]["cpu"], "threads": runs["default"][0]["threads"],
              "backend": runs["default"][0]["backend"], "runs": runs}
    for key in ("lm_tokens_per_s", "grokking_epochs_per_s"):
        med = {mode: statistics.median(x[key] for x in runs[mode]) for mode in MODES}
        result[key] = med | {"ratio_strict_to_default": med["strict"] / med["default"]}
        print(f"{key:22s} default {med['default']:10,.1f}  strict {med['strict']:10,.1f}  "
              f"strict/default {med['strict'] / med['default']:.3f}x")
    for mode in MODES:
        result[f"thread_invariant_{mode}"] = all(x["thread_invariant"] for x in runs[mode])
        print(f"thread-invariant grokking step, {mode}: {result[f'thread_invariant_{mode}']} "
              f"({sum(x['thread_invariant'] for x in runs[mode])} of {args.rounds} rounds)")
    print(f"CPU: {result['cpu']}, {result['threads']} threads, products: {result['backend']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

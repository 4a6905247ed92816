"""Denormal floats in late grokking training (issue 16): the same resumed training with and without
`torch.set_flush_denormal(True)`, side by side in one process.

After the training set is memorised (train loss ~1e-7), many gradients and optimizer moments are denormal floats,
which the CPU handles in slow microcode. This resumes copies of a grokking run from its latest checkpoint through the
one training loop (`train(..., resume=True)`) for --epochs more epochs, alternately with flushing off and on
(--rounds of each), and reports epochs/s, the ratio, and how far the two trajectories' weights end apart (flushing
changes the numbers: values below ~1e-38 become 0). Nothing in circuitlab turns flushing on yet: this measures
whether it should. Writes JSON to benchmarks/results/grokking_denormal.json.

    .venv/bin/python benchmarks/grokking_denormal.py --run runs/reproduce-quick/grokking/run [--epochs 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a grokking run folder (a finished `experiment grokking`)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from circuitlab.training import ModularAdditionTask, Run, train

    base = Run.open(args.run)
    start = base.checkpoints[-1]
    model_cfg, train_cfg = base.config, base.train_config
    longer = type(train_cfg)(**{**train_cfg.to_dict(), "max_steps": start + args.epochs})
    times: dict[str, list[float]] = {"off": [], "on": []}
    finals: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in ("off", "on"):
                d = Path(tmp) / f"{mode}-{r}"
                shutil.copytree(args.run, d)
                torch.set_flush_denormal(mode == "on")
                t0 = time.perf_counter()
                run = train(model_cfg, longer, ModularAdditionTask(**{k: v for k, v in base.task.items() if k != "kind"}), d, resume=True,
                            progress=False)
                times[mode].append(time.perf_counter() - t0)
                torch.set_flush_denormal(False)
                finals[mode] = {"params": {n: p.detach().clone() for n, p in run.model().named_parameters()},
                                "row": run.metrics[-1]}
    rate = {m: args.epochs / statistics.median(t) for m, t in times.items()}
    diff = max(float((finals["on"]["params"][n] - p).abs().max()) for n, p in finals["off"]["params"].items())
    out = {
        "run": str(args.run), "from_epoch": start, "epochs": args.epochs, "rounds": args.rounds,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "epochs_per_s_flush_off": round(rate["off"], 2), "epochs_per_s_flush_on": round(rate["on"], 2),
        "ratio_on_over_off": round(rate["on"] / rate["off"], 2), "max_weight_difference": diff,
        "last_row_flush_off": finals["off"]["row"], "last_row_flush_on": finals["on"]["row"],
        "seconds": times,
    }
    print(json.dumps(out, indent=1))
    path = Path(__file__).parent / "results" / "grokking_denormal.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

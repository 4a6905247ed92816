"""Subnormal (denormal) floats in late grokking training (issue 16): the same resumed training three ways, side by
side in alternating rounds of one process.

After the training set is memorised (train loss ~1e-7), the wrong answers' probabilities fall below float32's
smallest normal number, so the float64 loss's gradient arrives at the float32 logits full of subnormal floats, and
every backward product takes them as operands; Intel CPUs multiply those in microcode (session 18's Xeon: the step
2.7x slower). This resumes copies of a grokking run from its latest checkpoint through the one training loop
(`train(..., resume=True)`) for --epochs more epochs, each round in three modes:

- `plain`: the gradient cast to float32 as it is (`circuitlab.model.loss.FLUSH_SUBNORMAL_GRAD = False`);
- `grad_flush`: circuitlab's loss, its gradient's subnormal entries zeroed (the default since session 18);
- `thread_flush`: `plain` with `torch.set_flush_denormal(True)`, which sets the calling thread only.

It reports epochs/s, the ratios to `plain`, and how far each mode's weights end from `plain`'s (0.0: the same to the
bit). Writes JSON to benchmarks/results/grokking_denormal.json.

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

from circuitlab.model import matmul


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
    from circuitlab.model import loss as loss_module

    modes = ("plain", "grad_flush", "thread_flush")
    times: dict[str, list[float]] = {m: [] for m in modes}
    finals: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in modes:
                d = Path(tmp) / f"{mode}-{r}"
                shutil.copytree(args.run, d)
                loss_module.FLUSH_SUBNORMAL_GRAD = mode == "grad_flush"
                torch.set_flush_denormal(mode == "thread_flush")
                t0 = time.perf_counter()
                run = train(model_cfg, longer, ModularAdditionTask(**{k: v for k, v in base.task.items() if k != "kind"}), d, resume=True,
                            progress=False)
                times[mode].append(time.perf_counter() - t0)
                torch.set_flush_denormal(False)
                loss_module.FLUSH_SUBNORMAL_GRAD = True
                finals[mode] = {"params": {n: p.detach().clone() for n, p in run.model().named_parameters()},
                                "row": run.metrics[-1]}
    rate = {m: args.epochs / statistics.median(t) for m, t in times.items()}
    diff = {m: max(float((finals[m]["params"][n] - p).abs().max()) for n, p in finals["plain"]["params"].items())
            for m in modes[1:]}
    out = {
        "run": str(args.run), "from_epoch": start, "epochs": args.epochs, "rounds": args.rounds,
        "machine": platform.processor() or platform.machine(), "cpu": matmul.cpu_name(),
        "matmul": matmul.backend(), "threads": torch.get_num_threads(),
        "epochs_per_s": {m: round(v, 2) for m, v in rate.items()},
        "ratio_to_plain": {m: round(rate[m] / rate["plain"], 2) for m in modes[1:]},
        "max_weight_difference_to_plain": diff,
        "last_row": {m: finals[m]["row"] for m in modes},
        "seconds": times,
    }
    for m in modes:
        print(f"{m:13s} {rate[m]:6.2f} epochs/s" + (f"  {rate[m] / rate['plain']:.2f}x plain, weights "
                                                      f"{diff[m]:.3g} from plain's" if m != "plain" else ""))
    print(json.dumps(out, indent=1))
    path = Path(__file__).parent / "results" / "grokking_denormal.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

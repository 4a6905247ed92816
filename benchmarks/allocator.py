"""glibc malloc settings (`circuitlab.training.allocator`): the grokking step and evaluation, and the language-model
step, with the settings and with glibc's own, each in a fresh process (malloc settings are per process), the two
alternating round after round so the machine's drift hits both. Prints medians and ratios; writes JSON to
benchmarks/results/.

    .venv/bin/python benchmarks/allocator.py [--rounds 3] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np, torch
from circuitlab.training.allocator import keep_freed_memory
applied = keep_freed_memory()
steps = int(sys.argv[1])
from circuitlab.experiments.grokking import grokking_model
from circuitlab.model import ModelConfig, Transformer
from circuitlab.training import get_preset
from circuitlab.training.config import TrainConfig
from circuitlab.training.loop import make_optimizer
from circuitlab.training.tasks import ModularAdditionTask
from circuitlab.data import load_corpus, prepare_tokens
from circuitlab.data.windows import sample_windows

def timed(fn, n):
    for _ in range(3):
        fn()
    f0, ts = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n

preset = grokking_model(); m, t = preset.configs()
task = ModularAdditionTask(**preset.task); task.prepare(m, t, torch.device("cpu"))
net = Transformer(m); opt = make_optimizer(net, t)
def grok_step():
    task.loss(net, task.batch(0)).backward(); opt.step(); opt.zero_grad(set_to_none=True)
out = {"applied": applied}
out["grokking_step_s"], out["grokking_step_faults"] = timed(grok_step, steps)
out["grokking_evaluate_s"], out["grokking_evaluate_faults"] = timed(lambda: task.evaluate(net, 0), steps)

cfg = ModelConfig(**get_preset("attn2").model)
lm = Transformer(cfg); lm_opt = make_optimizer(lm, TrainConfig(lr=1e-3))
data = prepare_tokens(load_corpus("stdlib"), cfg.d_vocab)
state = {"step": 0}
def lm_step():
    tokens = sample_windows(data.train, 8, cfg.n_ctx, np.random.default_rng([0, state["step"]]), bos=True)
    state["step"] += 1
    lm(tokens, return_type="loss").backward()
    torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0); lm_opt.step(); lm_opt.zero_grad(set_to_none=True)
out["lm_step_s"], out["lm_step_faults"] = timed(lm_step, 2 * steps)
out["lm_tokens_per_s"] = 8 * cfg.n_ctx / out["lm_step_s"]
print(json.dumps(out))
"""


def child(kept: bool, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "CIRCUITLAB_MALLOC"}
    if not kept:
        env["CIRCUITLAB_MALLOC"] = "system"
    r = subprocess.run([sys.executable, "-c", CHILD, str(steps)], capture_output=True, text=True, env=env, check=True)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["applied"] == kept, result
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/allocator.json")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"kept": [], "system": []}
    for i in range(args.rounds):
        for name in ("system", "kept"):
            runs[name].append(child(name == "kept", args.steps))
            print(f"round {i + 1} {name:6s} " + "  ".join(f"{k} {v:.4g}" for k, v in runs[name][-1].items()
                                                          if k != "applied"), flush=True)
    keys = [k for k in runs["kept"][0] if k != "applied"]
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    speedup = {"grokking_step": med["system"]["grokking_step_s"] / med["kept"]["grokking_step_s"],
               "grokking_evaluate": med["system"]["grokking_evaluate_s"] / med["kept"]["grokking_evaluate_s"],
               "lm_step": med["system"]["lm_step_s"] / med["kept"]["lm_step_s"]}
    for what in ("grokking_step", "grokking_evaluate", "lm_step"):
        s, k = med["system"], med["kept"]
        print(f"{what:18s} glibc's own {1e3 * s[what + '_s']:6.1f} ms ({s[what + '_faults']:7.0f} page faults)   "
              f"kept {1e3 * k[what + '_s']:6.1f} ms ({k[what + '_faults']:7.0f})   {speedup[what]:.2f}x")
    import torch

    result = {"median": med, "speedup": speedup, "runs": runs, "rounds": args.rounds, "steps": args.steps,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

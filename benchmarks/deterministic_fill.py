"""Deterministic algorithms with and without torch's NaN fill of every new tensor, on the steps `train` runs.

With `torch.use_deterministic_algorithms(True)` torch also fills each tensor it allocates uninitialised with NaN
(`torch.utils.deterministic.fill_uninitialized_memory`, on by default); `train` turns the fill off
(`training.loop.deterministic_kernels`). Timed here, in alternating rounds of one process, each contender training
its own copy of the same weights on the same batches: the grokking step (paper settings, full batch) on one thread
and on two, and the induction stage's 2L step (the quick preset, batch 8 x 128, fresh corpus batches) on one thread,
as `reproduce` runs them beside each other. After the rounds both copies must hold the same weights to the bit.

    .venv/bin/python benchmarks/deterministic_fill.py [--rounds 6] [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.utils.deterministic as deterministic

from circuitlab.data import load_corpus, prepare_tokens
from circuitlab.experiments.grokking import grokking_model
from circuitlab.experiments.induction.presets import PRESETS
from circuitlab.model import Transformer, matmul
from circuitlab.training.allocator import keep_freed_memory
from circuitlab.training.loop import make_optimizer
from circuitlab.training.tasks import ModularAdditionTask, batch_at


def grokking_contenders():
    preset = grokking_model()
    mcfg, cfg = preset.configs()
    task = ModularAdditionTask(**preset.task)
    task.prepare(mcfg, cfg, torch.device("cpu"))
    first = Transformer(mcfg)

    def contender():
        net = copy.deepcopy(first)
        opt = make_optimizer(net, cfg)

        def step():
            task.loss(net, task.batch(0)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return net, step

    return contender


def induction_contenders():
    mcfg, cfg = PRESETS["quick"].models["2L"].configs()
    data = prepare_tokens(load_corpus("stdlib"), mcfg.d_vocab)
    first = Transformer(mcfg)

    def contender():
        net = copy.deepcopy(first)
        opt = make_optimizer(net, cfg)
        state = {"step": 0}

        def step():
            batch = batch_at(data, cfg, mcfg.n_ctx, state["step"])  # the training loop's batch of that step
            state["step"] += 1
            net(batch, return_type="loss").backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return net, step

    return contender


def compare(make, threads: int, rounds: int, steps: int) -> dict:
    saved, saved_fill = torch.get_num_threads(), deterministic.fill_uninitialized_memory
    torch.set_num_threads(threads)
    try:
        runs = {fill: make() for fill in (True, False)}
        rates = {fill: [] for fill in runs}
        for fill, (_, step) in runs.items():  # warm-up
            deterministic.fill_uninitialized_memory = fill
            for _ in range(3):
                step()
        for _ in range(rounds):
            for fill, (_, step) in runs.items():
                deterministic.fill_uninitialized_memory = fill
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                rates[fill].append(steps / (time.perf_counter() - t0))
        same = all(torch.equal(a, b) for a, b in zip(runs[True][0].parameters(), runs[False][0].parameters()))
    finally:
        torch.set_num_threads(saved)
        deterministic.fill_uninitialized_memory = saved_fill
    fill, no_fill = statistics.median(rates[True]), statistics.median(rates[False])
    return {"threads": threads, "steps_per_s_fill": fill, "steps_per_s_no_fill": no_fill, "speedup": no_fill / fill,
            "rounds_fill": rates[True], "rounds_no_fill": rates[False], "same_weights": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/deterministic_fill.json")
    args = ap.parse_args()
    keep_freed_memory()  # as the training loop runs
    torch.use_deterministic_algorithms(True, warn_only=True)
    grok, induction = grokking_contenders(), induction_contenders()
    results = {
        "grokking_step_one_thread": compare(grok, 1, args.rounds, args.steps),
        "grokking_step_two_threads": compare(grok, 2, args.rounds, args.steps),
        "induction_2L_step_one_thread": compare(induction, 1, args.rounds, args.steps),
    }
    for name, r in results.items():
        print(f"{name}: {r['steps_per_s_fill']:.2f} steps/s with the fill, {r['steps_per_s_no_fill']:.2f} without: "
              f"{r['speedup']:.3f}x; the same weights after the rounds: {r['same_weights']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"what": __doc__.splitlines()[0], "rounds": args.rounds, "steps": args.steps,
                               "machine": platform.processor() or platform.machine(), "cpu": matmul.cpu_name(),
                               "torch": torch.__version__, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

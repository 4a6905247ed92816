"""The grokking experiment (Nanda et al. 2023): train with the paper's settings (or a labelled quick preset) through
the one training loop, analyse the run, and write OUT/results.json with the claims and plot data.

`python -m circuitlab.experiments.grokking SPEC` runs it in a process of its own, the way `reproduce` runs it
beside the induction models (`spec_of` writes SPEC; `training.threads.ThreadsFromFile` sets its thread count)."""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable

from circuitlab.experiments.grokking.analysis import analyze_grokking
from circuitlab.experiments.grokking.results import GrokkingResults
from circuitlab.training import ModularAdditionTask, train
from circuitlab.training.presets import ExperimentPreset


def run_grokking_experiment(preset: ExperimentPreset, out: Path | str, progress: bool = True,
                            callbacks: tuple = (), before_analysis: Callable[[], None] | None = None) -> GrokkingResults:
    """Train (resuming, or reusing a finished run in OUT/run), analyse, write OUT/results.json. `before_analysis` is
    called between the two (the process of its own takes its thread count from the threads file again there: `train`
    gives back the count it was called with)."""
    out = Path(out)
    run_dir = out / "run"
    model = preset.models["grokking"]
    m, t = model.configs()
    t0 = time.perf_counter()
    run = train(m, t, ModularAdditionTask(**model.task), run_dir, resume=(run_dir / "run.json").exists(),
                progress=progress, callbacks=list(callbacks))
    train_s = time.perf_counter() - t0
    if before_analysis is not None:
        before_analysis()
    t0 = time.perf_counter()
    result = analyze_grokking(run, preset.name, list(preset.differs))
    result.seconds = {"train": train_s, "analysis": time.perf_counter() - t0}
    result.save(out / "results.json")
    return result


def spec_of(preset: ExperimentPreset, out: Path, threads_file: Path) -> dict:
    """What the process of its own needs: the preset (rebuilt from its changes of `grokking_model`, so a preset made
    in the calling process travels too), OUT and the threads file."""
    return {"name": preset.name, "differs": list(preset.differs), "changes": preset.settings["grokking_model"],
            "out": str(out), "threads_file": str(threads_file)}


def thread_invariant(preset: ExperimentPreset, threads: int, epochs: int = 3) -> bool:
    """Whether this machine's kernels give the grokking step the same result, to the bit, on 1 thread and on
    `threads`: a few full-batch epochs of the preset's model from one initialisation, then an evaluation of the
    training and test sets, once per count (about a second). `reproduce` switches the grokking run's thread count
    mid-run only where this holds; on machines whose kernels round differently per thread count (session 8's did)
    the switch would make the results depend on when it happened."""
    import copy

    import torch

    from circuitlab.model import Transformer
    from circuitlab.training.loop import deterministic_kernels, make_optimizer

    model = preset.models["grokking"]
    m, t = model.configs()
    task = ModularAdditionTask(**model.task)
    task.prepare(m, t, torch.device("cpu"))
    first = Transformer(m)
    saved = torch.get_num_threads()
    ends = []
    try:
        with deterministic_kernels():  # as the training loop runs it
            for n in (1, threads):
                torch.set_num_threads(n)
                net = copy.deepcopy(first)
                opt = make_optimizer(net, t)
                for step in range(epochs):
                    task.loss(net, task.batch(step)).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                ends.append((torch.cat([p.detach().flatten() for p in net.parameters()]), task.evaluate(net, epochs)))
    finally:
        torch.set_num_threads(saved)
    return torch.equal(ends[0][0], ends[1][0]) and ends[0][1] == ends[1][1]

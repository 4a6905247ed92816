"""The grokking experiment (Nanda et al. 2023): train with the paper's settings (or a labelled quick preset) through
the one training loop, analyse the run, and write OUT/results.json with the claims and plot data."""

from __future__ import annotations

import time
from pathlib import Path

from circuitlab.experiments.grokking.analysis import analyze_grokking
from circuitlab.experiments.grokking.results import GrokkingResults
from circuitlab.training import ModularAdditionTask, train
from circuitlab.training.presets import ExperimentPreset


def run_grokking_experiment(preset: ExperimentPreset, out: Path | str, progress: bool = True) -> GrokkingResults:
    """Train (resuming, or reusing a finished run in OUT/run), analyse, write OUT/results.json."""
    out = Path(out)
    run_dir = out / "run"
    model = preset.models["grokking"]
    m, t = model.configs()
    t0 = time.perf_counter()
    run = train(m, t, ModularAdditionTask(**model.task), run_dir, resume=(run_dir / "run.json").exists(),
                progress=progress)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = analyze_grokking(run, preset.name, list(preset.differs))
    result.seconds = {"train": train_s, "analysis": time.perf_counter() - t0}
    result.save(out / "results.json")
    return result

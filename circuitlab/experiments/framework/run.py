"""The Framework experiment (Elhage et al. 2021): train the models the preset lists, analyse them and any given
runs (OUT/NAME/analysis.json), and judge the claims (OUT/results.json)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from circuitlab.data import load_corpus, prepare_tokens
from circuitlab.experiments.claims import Claim
from circuitlab.experiments.framework.analysis import analyze_run
from circuitlab.experiments.framework.claims import framework_claims
from circuitlab.results import Result
from circuitlab.training import Run, train
from circuitlab.training.run import finished_run
from circuitlab.training.presets import ExperimentPreset


@dataclass
class FrameworkResults(Result):
    """runs: model name -> the run analysed (its analysis in OUT/NAME/analysis.json)."""

    experiment: str
    preset: str
    runs: dict[str, str]
    claims: list[Claim]
    corpus: str = "stdlib"  # the corpus's id (spec@fingerprint) of the runs analysed
    seconds: dict[str, float] = field(default_factory=dict)


def analysis_file(out: Path | str, name: str) -> Path:
    return Path(out) / name / "analysis.json"


def train_preset_model(preset, run_dir: Path, like: dict | None = None, corpus: dict | None = None,
                       progress: bool = True) -> Path:
    """Train (resume, or reuse when finished) one language model of a preset; `like` overrides its model fields
    (the width and vocabulary shared with other experiments' models)."""
    m, t = preset.configs(model={**(like or {}), "n_layers": preset.model["n_layers"], "smeared_keys": False})
    if finished_run(run_dir, m, t) is None:
        data = prepare_tokens(load_corpus(**(corpus or {})), m.d_vocab, t.heldout_fraction)
        train(m, t, data, run_dir, resume=(run_dir / "run.json").exists(), progress=progress)
    return run_dir


def run_framework_experiment(preset: ExperimentPreset, out: Path | str, runs: dict[str, Path] | None = None,
                             like: dict | None = None, corpus: dict | None = None,
                             progress: bool = True) -> FrameworkResults:
    """Train the preset's models under OUT/NAME/run, analyse them and `runs` (name -> run dir), write
    OUT/results.json."""
    out = Path(out)
    t0 = time.perf_counter()
    all_runs = {n: train_preset_model(p, out / n / "run", like, corpus, progress) for n, p in preset.models.items()}
    all_runs |= {n: Path(d) for n, d in (runs or {}).items()}
    t1 = time.perf_counter()
    analyses = {n: analyze_run(d, analysis_file(out, n)) for n, d in sorted(all_runs.items())}
    data = [Run.open(d).data for d in all_runs.values()]
    corpora = sorted({x.get("corpus_id", x.get("corpus", "stdlib")) for x in data})
    result = FrameworkResults("framework", preset.name, {n: str(d) for n, d in sorted(all_runs.items())},
                              framework_claims(analyses), corpus=" + ".join(corpora),
                              seconds={"train": t1 - t0, "analysis": time.perf_counter() - t1})
    result.save(out / "results.json")
    return result

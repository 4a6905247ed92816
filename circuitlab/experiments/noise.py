"""The float-noise check: does each verdict survive a change the size of one rounding?

A verdict is evidence only if float noise cannot flip it. Training is chaotic enough that a different summation order
(another matmul backend, another thread count, another step formula) moves a run's trajectory, and a measured value
near its threshold can land on either side (session 16: one step that only summed in another order moved "most
neurons are explained by a single frequency" from 75.6% to 67.4%, against 70%). Run k of the check (k = 1..N) is
the experiment again with every model's randomly initialised weights each moved one unit in the last place, up or
down, the signs drawn from k (`ModelConfig.init_noise`): the same command, data and hyper-parameters, perturbed by
as little as a float can be. Run 0 is the experiment's own directory, run k lives in OUT/float-noise/k, so finished
runs are reused and an interrupted one resumes.

Each claim's verdict over the N + 1 runs (`stability`): the common verdict when every run gives it, else
"unstable: reproduced in k of N + 1 runs", which is not a result either way. The measured values' spread is the
seeds' (`seeds.spread`). Written to OUT/float-noise.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.experiments.seeds import SeedClaim, aggregate, finished
from circuitlab.results import Result
from circuitlab.training.presets import ExperimentPreset

UNSTABLE = "unstable"


@dataclass
class NoiseResults(Result):
    """claims: one per claim over the runs (SeedClaim's `seeds` counts the runs, run 0 the unperturbed)."""

    experiment: str
    preset: str
    runs: list[int]
    dirs: list[str]
    claims: list[SeedClaim]
    unstable: int


def stability(verdicts: list[str]) -> str:
    """The runs' common verdict, or 'unstable: reproduced in k of N runs' where they disagree."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    k = sum(v == "reproduced" for v in verdicts)
    return f"{UNSTABLE}: reproduced in {k} of {len(verdicts)} runs"


def noise_dir(out: Path | str, k: int) -> Path:
    return Path(out) if k == 0 else Path(out) / "float-noise" / str(k)


def with_noise(preset: ExperimentPreset, k: int) -> ExperimentPreset:
    """The preset with every model's initial weights moved one ulp, signs from k (k = 0: the preset itself):
    those in `models`, and through settings["init_noise"] those an experiment builds itself (induction's
    synthetic-task models)."""
    if k == 0:
        return preset
    return preset.but(models={n: p.but(model={"init_noise": k}) for n, p in preset.models.items()},
                      settings={"init_noise": k})


def run_noise(experiment: str, run, preset: ExperimentPreset, out: Path | str, n: int, results_cls=None,
              corpus_id: str | None = None) -> NoiseResults:
    """Run `run(preset_for_k, dir, k)` for k = 0..n (0 unperturbed, reusing any finished run there with the same preset
    and corpus), combine each claim's verdicts by `stability`, write OUT/float-noise.json."""
    if n < 1:
        raise CircuitlabError(f"--float-noise must be at least 1 (got {n})")
    dirs = [noise_dir(out, k) for k in range(n + 1)]
    results = []
    for k, d in enumerate(dirs):
        saved = finished(results_cls, d / "results.json", preset.name, corpus_id) if results_cls else None
        results.append(saved or run(with_noise(preset, k), d, k))
    claims = aggregate([r.claims for r in results], stability, "run")
    summary = NoiseResults(experiment, preset.name, list(range(n + 1)), [str(d) for d in dirs], claims,
                           sum(c.verdict.startswith(UNSTABLE) for c in claims))
    summary.save(Path(out) / "float-noise.json")
    return summary

"""Claims over several seeds: each claim as "reproduced in k of N seeds", with the spread of every measured value.

A seed changes the model's initialisation and the data order (and, for grokking, the train/test split). Seed 0 is
the experiment's own directory; seed k > 0 lives in OUT/seeds/k, so finished seeds are reused and an interrupted
one resumes.

The spread: a claim's measured text has the same template in every seed ("window 9.2M–14.6M tokens; score 0.041 →
0.166"); each number is replaced by its range over the seeds ("score 0.038…0.052 → 0.151…0.172"). Where the text
differs in more than its numbers (a window found in one seed and not in another), the seeds' texts are listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.experiments.claims import Claim
from circuitlab.results import Result
from circuitlab.training.presets import ExperimentPreset

# a number as the claims write them: thousands separated by commas ("2,304,000", not the list "19, 22"), a
# decimal part, an exponent ("3.27e-07"), a sign only where no digit or letter precedes it (the dash of a range
# "2,304,000-5,632,000" is not a minus)
NUMBER = re.compile(r"(?:(?<![\w.])[-+−])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
# the names of things, not measurements: a list, map or set in brackets (key frequencies, clusters, a set of heads
# K), heads named LAYER.HEAD after "head"/"heads" (then ":", ";", ")", " (", " puts", " —" or the end: "individual
# heads 2.59, virtual heads 0.09 nats" is a measurement), in a composition "0.1 → 1.3" or as "1.3's"
NAMES = re.compile(r"\[[^\]]*\]|\{[^}]*\}|\bheads? \d+\.\d+(?:, \d+\.\d+)*(?=[:;)]| \(| puts| —|$)|"
                   r"composition \d+\.\d+ → \d+\.\d+|\d+\.\d+'s")


@dataclass
class SeedClaim(Result):
    """One claim over N seeds: its verdict in each, how many reproduced it, the measured values' spread. verdict:
    'reproduced' only when every seed reproduces it, 'reproduced in k of N seeds' when some do."""

    paper: str
    claim: str
    expected: str
    measured: str
    verdict: str
    verdicts: list[str]
    reproduced: int
    seeds: int
    section: str = ""


def overall(verdicts: list[str]) -> str:
    k, n = sum(v == "reproduced" for v in verdicts), len(verdicts)
    if k == n:
        return "reproduced"
    if k == 0:
        return "differs" if all(v == "differs" for v in verdicts) else "not reproduced"
    return f"reproduced in {k} of {n} seeds"


@dataclass
class SeedResults(Result):
    experiment: str
    preset: str
    seeds: list[int]
    dirs: list[str]
    claims: list[SeedClaim]


def seed_dir(out: Path | str, seed: int) -> Path:
    return Path(out) if seed == 0 else Path(out) / "seeds" / str(seed)


def with_seed(preset: ExperimentPreset, seed: int) -> ExperimentPreset:
    """The preset with every model's initialisation and data order drawn from `seed` (seed 0: the preset itself):
    those in `models`, and through settings["seed"] what an experiment draws itself (induction's synthetic-task
    models, IOI's prompts)."""
    if seed == 0:
        return preset
    models = {n: p.but(model={"seed": seed}, train={"seed": seed},
                       task={"seed": seed} if "seed" in p.task else None) for n, p in preset.models.items()}
    return preset.but(models=models, settings={"seed": seed})


def _number(s: str) -> float:
    return float(s.replace(",", "").replace("−", "-"))


def spread(texts: list[str], label: str = "seed") -> str:
    """One text for the seeds' measured texts, each number replaced by its range over the seeds (where the texts
    differ in more than their numbers, or in what they name (`NAMES`), each listed as "LABEL k: text")."""
    if len(set(texts)) == 1:
        return texts[0]
    templates = [NUMBER.split(t) for t in texts]
    # texts that name other things (other key frequencies, another head) are listed: a range of names would mislead
    if any(tp != templates[0] for tp in templates) or len({tuple(NAMES.findall(t)) for t in texts}) > 1:
        return " | ".join(f"{label} {i}: {t}" for i, t in enumerate(texts))
    columns = zip(*(NUMBER.findall(t) for t in texts))
    parts = []
    for column in columns:
        values = [_number(x) for x in column]
        lo, hi = min(range(len(values)), key=values.__getitem__), max(range(len(values)), key=values.__getitem__)
        parts.append(column[0] if len(set(column)) == 1 else f"{column[lo]}…{column[hi]}")
    out = templates[0][0]
    for part, text in zip(parts, templates[0][1:]):
        out += part + text
    return out


def aggregate(per_seed: list[list[Claim]], combine=overall, label: str = "seed") -> list[SeedClaim]:
    """Claims of N seeds (the same claims in the same order in each) -> one SeedClaim each, its verdict
    `combine(verdicts)` (`overall`; the float-noise check's runs: `noise.stability`, label "run")."""
    if len({len(c) for c in per_seed}) != 1 or any([c.claim for c in cs] != [c.claim for c in per_seed[0]]
                                                     for cs in per_seed):
        raise ValueError("the seeds' claims differ: they cannot be aggregated")
    out = []
    for claims in zip(*per_seed):
        first = claims[0]
        verdicts = [c.verdict for c in claims]
        out.append(SeedClaim(first.paper, first.claim, first.expected, spread([c.measured for c in claims], label),
                             combine(verdicts), verdicts, sum(v == "reproduced" for v in verdicts), len(claims),
                             first.section))
    return out


def finished(cls, path: Path, preset: str, corpus: str | None = None, model: str | None = None):
    """The results a finished earlier call wrote at `path`, if made with the same preset (and corpus, or model) and
    readable; else None."""
    if not Path(path).exists():
        return None
    try:
        r = cls.load(path)
    except CircuitlabError:
        return None
    return r if r.preset == preset and (corpus is None or r.corpus == corpus) and \
        (model is None or r.model == model) else None


def run_seeds(experiment: str, run, preset: ExperimentPreset, out: Path | str, seeds: int,
              results_cls=None, corpus_id: str | None = None, model: str | None = None) -> SeedResults:
    """Run `run(preset_for_seed, dir, seed)` for seeds 0..N-1 (reusing a seed whose results are there, with the
    same preset and corpus), aggregate the claims, write OUT/seeds.json."""
    dirs = [seed_dir(out, k) for k in range(seeds)]
    results = []
    for k, d in enumerate(dirs):
        saved = finished(results_cls, d / "results.json", preset.name, corpus_id, model) if results_cls else None
        results.append(saved or run(with_seed(preset, k), d, k))
    summary = SeedResults(experiment, preset.name, list(range(seeds)), [str(d) for d in dirs],
                          aggregate([r.claims for r in results]))
    summary.save(Path(out) / "seeds.json")
    return summary

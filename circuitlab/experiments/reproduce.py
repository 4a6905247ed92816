"""`circuitlab reproduce`: every experiment, then the report. It sits above the experiment folders and composes
them; each stage reuses what a finished earlier call left in OUT and resumes what an interrupted one left:

1. induction: the 1L/2L/smeared-key models (3L in full), measured over training (`experiments.induction`);
2. circuits: the Framework experiment trains a zero-layer model (and in full an 8-layer one) and analyses it with
   the 1L and 2L (3L) models of stage 1 (`experiments.framework`);
3. grokking: modular addition (`experiments.grokking`). On two or more cores it runs from the start in a process of
   its own, on one thread beside stages 1 and 2, then on every core (`experiments.background`);
4. IOI: the indirect-object circuit of a pretrained model, offline by default (`experiments.ioi`);
5. the report: OUT/report.html, one section per experiment (`build_report`).

`--seeds N` runs stages 1-4 for seeds 0..N-1; `--float-noise N` runs stages 1-3, the ones that train, N more times
from initial weights one ulp away (`experiments.noise`; the circuits of run k read induction's run k; IOI's
pretrained model has no initialisation to perturb), and the report calls a claim whose verdict differs "unstable".

Adding a paper: a folder under experiments/ with its presets, run, results, claims, tables and report section,
then one stage here and one entry in SECTIONS.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from circuitlab import mkl
from circuitlab.data import load_corpus
from circuitlab.errors import CircuitlabError
from circuitlab.experiments import framework, grokking, induction, ioi
from circuitlab.experiments.background import BackgroundGrokking
from circuitlab.experiments.claims import Claim
from circuitlab.experiments.framework.report import framework_sections
from circuitlab.experiments.grokking.report import grokking_sections
from circuitlab.experiments.grokking.run import thread_invariant
from circuitlab.experiments.induction.presets import shared_model_settings
from circuitlab.experiments.induction.report import induction_sections
from circuitlab.experiments.ioi.report import ioi_sections
from circuitlab.experiments.noise import UNSTABLE, noise_dir, run_noise
from circuitlab.experiments.seeds import finished, run_seeds, seed_dir
from circuitlab.experiments.timeline import timeline, timeline_section
from circuitlab.report.figures import esc
from circuitlab.report.page import Page, claims_table, viewer_section, write_page
from circuitlab.results import Result, atomic_write_text
from circuitlab.training.presets import ExperimentPreset, choose
from circuitlab.training.threads import ENV as THREADS_ENV

# which preset of each experiment a reproduce preset runs
PRESETS: dict[str, ExperimentPreset] = {
    "quick": ExperimentPreset("quick", settings={"induction": "quick", "framework": "quick", "grokking": "quick",
                                                 "ioi": "quick", "ioi_model": ioi.DEFAULT_MODEL}),
    "full": ExperimentPreset("full", settings={"induction": "full", "framework": "full", "grokking": "paper",
                                               "ioi": "full", "ioi_model": ioi.DEFAULT_MODEL}),
}
CIRCUIT_MODELS = ("attn0", "attn1", "attn2", "attn3", "attn8")
TRAINED = ("circuits", "induction", "grokking")  # the stages whose verdicts float noise can move (IOI: pretrained)


@dataclass
class StageSummary(Result):
    status: str
    seconds: float
    claims: dict[str, int]


def reproduce(preset: str, out: Path | str, progress: bool = True, log=print, corpus: dict | None = None,
              seeds: int = 1, overlap: bool | None = None, float_noise: int = 0) -> dict[str, StageSummary]:
    """Run every stage; returns {stage: summary} (also OUT/summary.json). corpus: `load_corpus` arguments for the
    language models (default: the embedded stdlib corpus). seeds > 1: every stage for seeds 0..N-1 (seed k > 0 under
    STAGE/seeds/k), each claim reported as reproduced in k of N seeds (STAGE/seeds.json). overlap: train the grokking
    model beside the induction and circuits stages (default: with two or more free cores and no CIRCUITLAB_THREADS;
    never over several seeds); its stage's seconds are then counted from the start. float_noise > 0: stages 1-3
    also N more times from initial weights one ulp away (run k under STAGE/float-noise/k, STAGE/float-noise.json)."""
    if seeds < 1:
        raise CircuitlabError(f"--seeds must be at least 1 (got {seeds})")
    if float_noise < 0:
        raise CircuitlabError(f"--float-noise must be 0 (none) or more runs (got {float_noise})")
    if float_noise and seeds > 1:
        raise CircuitlabError("--float-noise and --seeds are one at a time: check float noise on one seed")
    p = choose(PRESETS, preset)
    ind_p = choose(induction.PRESETS, p.settings["induction"], "induction preset")
    fw_p = choose(framework.PRESETS, p.settings["framework"], "framework preset")
    grok_p = choose(grokking.PRESETS, p.settings["grokking"], "grokking preset")
    ioi_p = choose(ioi.PRESETS, p.settings["ioi"], "IOI preset")
    ioi_model = p.settings["ioi_model"]
    out = Path(out)
    corpus_id = load_corpus(**(corpus or {})).id  # a finished stage is reused only on the same corpus
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, StageSummary] = {}

    def stage(name: str, fn, done: bool) -> None:
        log(f"[{len(summary) + 1}/5] {name}" + (" (finished earlier: reusing)" if done else ""))
        t0 = time.perf_counter()
        claims = fn()
        summary[name] = StageSummary("reused" if done else "ran", round(time.perf_counter() - t0, 1), count(claims))

    def experiment(name: str, cls, p, d: Path, run, corpus_match: str | None, model: str | None = None,
                   trains: bool = True):
        """One stage: its claims, for one seed (reusing finished results), aggregated over the seeds, or (a stage
        that trains) over the float-noise runs."""
        if seeds > 1:
            stage(name, lambda: run_seeds(d.name, run, p, d, seeds, cls, corpus_match, model).claims, False)
            return
        if float_noise and trains:
            stage(name, lambda: run_noise(d.name, run, p, d, float_noise, cls, corpus_match).claims, False)
            return
        saved = finished(cls, d / "results.json", p.name, corpus_match, model)
        stage(name, lambda: (saved or run(p, d, 0)).claims, saved is not None)

    ind_dir = out / "induction"

    def circuits(p, d, k):  # the induction stage's models of the same seed (or float-noise run)
        member = noise_dir(ind_dir, k) if float_noise else seed_dir(ind_dir, k)
        runs = {"attn1": member / "runs" / "1L", "attn2": member / "runs" / "2L"}
        if "3L" in ind_p.models:
            runs["attn3"] = member / "runs" / "3L"
        return framework.run_framework_experiment(p, d, runs, like=shared_model_settings(ind_p), corpus=corpus,
                                                  progress=progress)

    def overlapped_grokking() -> list[Claim]:
        background.give(threads)  # stages 1 and 2 are done: every core
        log(f"    trained in its own process since the start; now on {threads} threads")
        background.wait(progress)
        if float_noise:  # run 0 is the one just trained; the perturbed runs follow on every core
            return run_noise(grok_dir.name, lambda p, d, k: grokking.run_grokking_experiment(p, d, progress=progress),
                             grok_p, grok_dir, float_noise, grokking.GrokkingResults).claims
        return grokking.GrokkingResults.load(grok_dir / "results.json").claims

    grok_dir = out / "grokking"
    threads = torch.get_num_threads()
    if overlap is None:
        overlap = threads >= 2 and THREADS_ENV not in os.environ
    done = finished(grokking.GrokkingResults, grok_dir / "results.json", grok_p.name, None) is not None
    overlap = overlap and seeds == 1 and not done
    if overlap and not thread_invariant(grok_p, threads):
        overlap = False
        log(f"grokking (Nanda et al. 2023) runs after circuits, not beside them: on this machine its step rounds "
            f"differently on 1 and {threads} threads, so switching the count mid-run would change its results"
            + mkl_hint())
    background = None
    if overlap:
        background = BackgroundGrokking(grok_p, grok_dir, threads=1)
        background.wait_started()
        torch.set_num_threads(max(1, threads - 1))  # the other cores for this process's own work
        log(f"grokking (Nanda et al. 2023) starts in its own process, on one thread beside the next stages "
            f"(its output: {background.log_path})")
    try:
        # beside the grokking process: one worker fewer, so no core runs two processes (measured, session 11: with
        # two workers beside it on two cores the grokking run made 5.3 epochs/s, the 2L model took 581 s against
        # 327 s without it, and the three stages took longer than one after another)
        workers = None if background is None else max(1, threads - 1)
        experiment("induction heads (Olsson et al. 2022)", induction.InductionResults, ind_p, ind_dir,
                   lambda p, d, k: induction.run_induction_experiment(p, d, workers=workers, progress=progress,
                                                                      corpus=corpus, in_process=False), corpus_id)
        experiment("circuits (Elhage et al. 2021)", framework.FrameworkResults, fw_p, out / "circuits", circuits,
                   corpus_id)
        torch.set_num_threads(threads)
        if background is None:
            experiment("grokking (Nanda et al. 2023)", grokking.GrokkingResults, grok_p, grok_dir,
                       lambda p, d, k: grokking.run_grokking_experiment(p, d, progress=progress), None)
        else:
            name = "grokking (Nanda et al. 2023)"
            stage(name, overlapped_grokking, False)
            # its stage began with the first: its seconds are counted from then
            summary[name] = StageSummary("ran in parallel", round(time.perf_counter() - background.t0, 1),
                                         summary[name].claims)
    finally:
        torch.set_num_threads(threads)
        if background is not None:
            background.stop()  # after an error or Ctrl-C: the run resumes where it stopped next time
    experiment("IOI circuit (Wang et al. 2022)", ioi.IOIResults, ioi_p, out / "ioi",
               lambda p, d, k: ioi.run_ioi_experiment(p.but(settings={"seed": k}), d, ioi_model, log=log), None,
               ioi_model, trains=False)

    def report() -> list[Claim]:
        write_summary()  # the report's timeline reads it
        build_report(out, seeds=seeds)
        return []

    def write_summary() -> None:
        atomic_write_text(out / "summary.json", json.dumps({k: v.to_json() for k, v in summary.items()}, indent=1))

    stage("report", report, False)
    write_summary()
    return summary


def mkl_hint() -> str:
    """On a CPU where circuitlab turns MKL's strict mode on, why the thread-invariance check may have failed: the
    user's MKL_CBWR kept it off, or MKL multiplied before circuitlab was imported (the variable came too late)."""
    value = os.environ.get(mkl.ENV)
    if value is None or not mkl.strict_mode_applies(*mkl.cpu_flags()):
        return ""
    if mkl.is_strict(value):
        return (f" (MKL_CBWR={value}, but MKL may have multiplied before it was set: import circuitlab before "
                f"torch's first product, or set it before Python starts)")
    return f" (MKL_CBWR={value}: unset it and circuitlab takes MKL's strict mode, thread-invariant on this CPU)"


def count(claims: list) -> dict[str, int]:
    return {"total": len(claims), "reproduced": sum(c.verdict == "reproduced" for c in claims),
            "not reproduced": sum(c.verdict == "not reproduced" for c in claims),
            "differs": sum(c.verdict == "differs" for c in claims),
            "in some seeds": sum(c.verdict.startswith("reproduced in") for c in claims),
            "unstable": sum(c.verdict.startswith(UNSTABLE) for c in claims)}


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CircuitlabError(f"{path} cannot be read ({e}): run `circuitlab reproduce` again") from None


def _other_seeds(stage: Path, seeds: int | None) -> list[dict]:
    """The results of seeds 1..N-1 of a stage (STAGE/seeds/k/results.json), for the report's spread bands: the
    seeds STAGE/seeds.json lists, or none when seeds == 1."""
    if (seeds is not None and seeds < 2) or not (stage / "seeds.json").exists():
        return []
    dirs = [seed_dir(stage, k) for k in _read(stage / "seeds.json").get("seeds", []) if k > 0]
    return [_read(d / "results.json") for d in dirs if (d / "results.json").exists()]


def _with_float_noise(stage: Path, results: dict) -> dict:
    """The stage's claims over its float-noise runs (STAGE/float-noise.json, `experiments/noise.py`: a verdict that
    differs between them reads 'unstable') when that file is of these results (its run 0's verdicts are theirs),
    else the results' own."""
    f = stage / "float-noise.json"
    if not f.exists():
        return results
    noise = _read(f)
    own = [(c["claim"], c["verdict"]) for c in results.get("claims", [])]
    if [(c["claim"], c["verdicts"][0]) for c in noise.get("claims", [])] != own:
        return results  # made from an earlier run 0: stale
    return noise


def build_report(out_dir: Path | str, path: Path | str | None = None, seeds: int | None = None) -> Path:
    """Write the report (default DIR/report.html) from the results `reproduce` left in DIR; returns its path.
    Sections read the results in their JSON form (seed 0's); the claims are the ones each experiment saved, over
    the seeds where it ran several (STAGE/seeds.json; seeds=None: wherever that file exists)."""
    out = Path(out_dir)
    analyses = {n: _read(f) for n in CIRCUIT_MODELS if (f := out / "circuits" / n / "analysis.json").exists()}
    results = {k: _read(f) for k in ("circuits", "induction", "grokking", "ioi")
               if (f := out / k / "results.json").exists()}
    if not analyses and not results:
        raise CircuitlabError(f"{out} has no results to report: run `circuitlab reproduce --out {out}` first")
    # over several seeds, each claim as reproduced in k of N seeds; else over the float-noise check's runs
    claims, single = [], []
    for k, r in results.items():
        over = _read(out / k / "seeds.json") if (out / k / "seeds.json").exists() and (seeds or 2) > 1 \
            else _with_float_noise(out / k, r)
        claims += [{"experiment": k, **c} for c in over.get("claims", [])]
        if over is r and k in TRAINED:
            single.append(k)
    try:
        return _build(out, analyses, results, claims, seeds, path, single)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise CircuitlabError(f"the results in {out} are damaged or from another version of circuitlab "
                              f"({type(e).__name__}: {str(e)[:200]}): run `circuitlab reproduce --out {out}` again") from None


def _timeline(out: Path, results: dict):
    """The run's timeline from OUT/summary.json, which `reproduce` writes; None without one (results of single
    experiments) or where it cannot be read: the rest of the report does not depend on it."""
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        return timeline(summary, {k: results[k].get("seconds") or {} for k in ("induction", "grokking") if k in results})
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _build(out: Path, analyses: dict, results: dict, claims: list, seeds: int | None, path,
           single: list[str] = ()) -> Path:
    page = Page()
    intro = "Every headline claim checked against a measurement; the section link shows the plot behind it."
    if single:  # one run's verdicts: say so, and how to check them
        intro += (f" The verdicts of {esc(', '.join(single))} are one training run's: <code>circuitlab reproduce "
                  f"--float-noise 1 --out {esc(str(out))}</code> trains again from weights one ulp away and marks "
                  f"a verdict that differs as unstable (not a result either way).")
    page.section("claims", "Claims", claims_table(claims), intro)
    framework_sections(page, analyses)
    if "induction" in results:
        ind = results["induction"]
        heads = ind["models"].get("2L", {}).get("induction_heads") or [None]
        viewer_section(page, ind["attention_viewer"], heads[0])
        induction_sections(page, ind, _other_seeds(out / "induction", seeds))
    if "grokking" in results:
        grokking_sections(page, results["grokking"], _other_seeds(out / "grokking", seeds))
    if "ioi" in results:
        ioi_sections(page, results["ioi"])
    if (t := _timeline(out, results)) is not None:
        timeline_section(page, t)
    return write_page(page, Path(path) if path else out / "report.html", "circuitlab: reproduced claims",
                      "Elhage et al. 2021 (circuits), Olsson et al. 2022 (induction heads), Nanda et al. 2023 "
                      "(grokking), measured on models trained by <code>circuitlab reproduce</code>; Wang et al. 2022 "
                      "(the IOI circuit) on a pretrained model.")

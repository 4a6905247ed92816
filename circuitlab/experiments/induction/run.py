"""The induction-heads experiment (Olsson et al. 2022): train the 1L, 2L (3L in full) and smeared-key models with
dense checkpoints, measure every checkpoint, find the phase change, run the controls, ablations and behaviours,
and write results.json with claims and plot data (`analysis` does the analysis).

Training runs in parallel worker processes (one model each, threads split between them); a finished run is
reused, an interrupted one resumed, and checkpoints already measured are not measured again.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.experiments.induction.presets import PRESETS
from circuitlab.experiments.induction.results import InductionResults
from circuitlab.results import atomic_write
from circuitlab.training.threads import ENV as THREADS_ENV
from circuitlab.training.threads import free_cores, threads_for
from circuitlab.training.presets import ExperimentPreset, choose


def _train_and_measure(name: str, mcfg: dict, tcfg: dict, run_dir: str, probe_path: str, threads: int,
                       corpus: dict, rule: dict, set_threads: bool = True) -> str:
    """Worker: train (resume / reuse) one model, measuring its checkpoints as it goes and stopping by `rule`
    ({"settle": bool, "follow": run directory or None}, see `online`), then measure any checkpoint left. Runs in
    its own process (or in this one, with set_threads=False, when there is one worker)."""
    import torch
    from safetensors.torch import load_file

    from circuitlab.data import load_corpus, prepare_tokens
    from circuitlab.experiments.induction.online import FAILED_NAME, MeasureAsTraining
    from circuitlab.induction.measure import Probe, measure_run
    from circuitlab.model import ModelConfig
    from circuitlab.training import Run, TrainConfig, train
    from circuitlab.training.lock import run_lock
    from circuitlab.training.run import finished_run

    if set_threads:
        torch.set_num_threads(threads)
    m, t = ModelConfig.from_dict(mcfg), TrainConfig.from_dict(tcfg)
    run_dir = Path(run_dir)
    (run_dir / FAILED_NAME).unlink(missing_ok=True)
    p = load_file(str(probe_path))
    probe = Probe(p["windows"], p["pca_positions"], p["allowed"])
    try:
        if finished_run(run_dir, m, t) is None:
            data = prepare_tokens(load_corpus(**corpus), m.d_vocab, t.heldout_fraction)
            online = MeasureAsTraining(probe, run_dir / "measurements.jsonl", settle=rule["settle"],
                                       follow=Path(rule["follow"]) if rule["follow"] else None)
            train(m, t, data, run_dir, resume=(run_dir / "run.json").exists(), progress=False, callbacks=[online])
        with run_lock(run_dir):  # measurements.jsonl is the run's too: one writer at a time
            measure_run(Run.open(run_dir), probe, run_dir / "measurements.jsonl")
    except BaseException:
        if run_dir.exists():
            (run_dir / FAILED_NAME).write_text("failed\n")
        raise
    return name


def _train_task(name: str, task_steps: int, out: str, threads: int, init_noise: int = 0, seed: int = 0) -> str:
    """Worker: train (or reuse) one of the behaviours' synthetic-task models (`analysis.task_models`), so it trains
    beside the language models instead of after them."""
    import torch

    from circuitlab.experiments.induction.analysis import task_models, train_task_model

    torch.set_num_threads(threads)
    task, cfg, steps = task_models(task_steps, init_noise, seed)[name]
    train_task_model(Path(out), task, cfg, steps)
    return name


def _progress_state(run_dir: Path, total: int) -> tuple[str, int]:
    """(stage, completed) for the progress display, read from the files a worker writes."""
    ckpts = run_dir / "checkpoints"
    measured = run_dir / "measurements.jsonl"
    if measured.exists():
        n = len(list(ckpts.glob("step-*.safetensors")))
        return "measuring", int(total * min(1.0, len(measured.read_text().splitlines()) / max(n, 1)))
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return "starting", 0
    lines = metrics.read_text().splitlines()
    try:
        return "training", json.loads(lines[-1])["step"] if lines else 0
    except (json.JSONDecodeError, KeyError):
        return "training", 0


def model_configs(preset: ExperimentPreset) -> dict[str, tuple]:
    return {n: p.configs() for n, p in preset.models.items()}


def device_plan(device: str, names: list[str], n_cuda: int | None = None) -> dict[str, str]:
    """Which device trains each model, in training order. 'cuda' spreads them over the visible GPUs, one model per
    device at a time (model i on cuda:i mod n); 'cuda:N', 'mps' and 'cpu' put them all on that one device."""
    import torch

    if device != "cuda":
        return {n: device for n in names}
    n = torch.cuda.device_count() if n_cuda is None else n_cuda
    if n < 1:
        raise CircuitlabError("--device cuda: no CUDA device here (this torch build or machine has none): use --device cpu")
    return {name: f"cuda:{i % n}" for i, name in enumerate(names)}


def training_rules(preset: ExperimentPreset, out: Path) -> dict[str, dict]:
    """How long each model trains (`online`): {"settle": stop once its phase change has settled, "follow": the run
    directory of the model it stops with}; the preset's token budgets are the caps. A follower must evaluate at the
    same token counts as the model it follows, so it can stop at exactly the same point."""
    follow = preset.settings.get("follow", {})
    cfgs = model_configs(preset)
    rules = {}
    for n in cfgs:
        lead = follow.get(n)
        if lead is not None and lead not in cfgs:  # a preset without the model to follow: train by its own rule
            lead = None
        if lead is not None:
            if lead in follow:
                raise CircuitlabError(f"preset {preset.name!r}: {n} follows {lead!r}, which follows another model "
                                      "itself: a model can only follow one that trains by its own rule")
            (m, t), (lm, lt) = cfgs[n], cfgs[lead]
            if (t.batch_size * m.n_ctx, t.eval_every) != (lt.batch_size * lm.n_ctx, lt.eval_every):
                raise CircuitlabError(f"preset {preset.name!r}: {n} follows {lead} but evaluates at other token "
                                      "counts: give both the same batch size, context and eval_every")
        rules[n] = {"settle": lead is None and bool(preset.settings.get("settle", True)),
                    "follow": str(out / "runs" / lead) if lead else None}
    return rules


def train_all(preset: ExperimentPreset, out: Path, workers: int | None = None, progress: bool = True,
              corpus: dict | None = None, device: str = "cpu",
              in_process: bool | None = None) -> tuple[dict[str, float], str]:
    """Train and measure every model of the preset under out/runs/NAME, on the default corpus or
    `load_corpus(**corpus)`, on `device` (see `device_plan`: with 'cuda', one model per GPU at a time). Returns
    ({name: seconds from the start until it was done}, the corpus's id). in_process (default: with one worker): in
    this process, one model after another, without the progress display; otherwise in worker processes."""
    import numpy as np
    from safetensors.torch import save_file

    from circuitlab.data import common_token_pool, load_corpus, prepare_tokens, sample_windows
    from circuitlab.induction.measure import Probe

    cfgs = model_configs(preset)
    if device != "cpu":
        from circuitlab.training.loop import check_device

        check_device(device)  # one line before anything starts (the corpus, the probe) where the device is not here
    first_m, first_t = next(iter(cfgs.values()))
    corpus = corpus or {}
    data = prepare_tokens(load_corpus(**corpus), first_m.d_vocab, first_t.heldout_fraction)  # fills the token cache
    out.mkdir(parents=True, exist_ok=True)
    probe_path = out / "probe.safetensors"
    if not probe_path.exists():
        windows = sample_windows(data.val, preset.settings["probe_windows"], first_m.n_ctx, np.random.default_rng(12345),
                                 True)
        probe = Probe.make(windows, common_token_pool(data.train, first_m.d_vocab))
        atomic_write(probe_path, lambda tmp: save_file(
            {"windows": probe.windows, "pca_positions": probe.pca_positions, "allowed": probe.allowed}, tmp))
    cpus = free_cores()  # the cores not busy with other work: workers x threads never exceeds them
    gpus = len(set(device_plan(device, list(cfgs)).values())) if device.startswith("cuda") else 0
    workers = workers or (min(len(cfgs), gpus) if gpus else max(1, min(len(cfgs), 2 if cpus <= 4 else cpus // 2)))
    threads = threads_for(workers) if os.environ.get(THREADS_ENV) else max(1, cpus // workers)
    totals = {n: t.total_steps(m.n_ctx) for n, (m, t) in cfgs.items()}
    rules = training_rules(preset, out)
    # longest first, so the short smeared-key runs fill in behind the long ones; a follower after the run it follows
    order = sorted(cfgs, key=lambda n: (rules[n]["follow"] is not None,
                                        -cfgs[n][1].max_tokens * (1 + cfgs[n][0].n_layers)))
    on = device_plan(device, order)
    cfgs = {n: (m, replace(t, device=on[n])) for n, (m, t) in cfgs.items()}
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    if in_process if in_process is not None else workers == 1:  # no spawn, so a script needs no __main__ guard
        for n in order:
            _train_and_measure(n, cfgs[n][0].to_dict(), cfgs[n][1].to_dict(), str(out / "runs" / n), str(probe_path),
                               threads, corpus, rules[n], set_threads=False)
            seconds[n] = time.perf_counter() - t0
        return seconds, data.info["corpus_id"]
    dirs = {n: out / "runs" / n for n in order}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_train_and_measure, n, cfgs[n][0].to_dict(), cfgs[n][1].to_dict(),
                               str(dirs[n]), str(probe_path), threads, corpus, rules[n]): n for n in order}
        if device == "cpu":  # the behaviours' task models fill in behind (the longer first); the analysis reuses them
            from circuitlab.experiments.induction.analysis import task_models

            noise, seed = preset.settings.get("init_noise", 0), preset.settings.get("seed", 0)
            tasks = task_models(preset.settings["task_steps"], noise, seed)
            for t in sorted(tasks, key=lambda t: -tasks[t][2]):
                n = f"{t} task"
                dirs[n], totals[n] = out / "tasks" / t, tasks[t][2]
                futures[pool.submit(_train_task, t, preset.settings["task_steps"], str(out), threads, noise,
                                     seed)] = n
        if progress:
            _show_progress(futures, dirs, totals, seconds, t0)
        for f, n in futures.items():
            try:
                f.result()  # re-raises a worker's error
            except BrokenProcessPool:
                raise CircuitlabError(
                    "a training worker process died: if you call run_induction_experiment from a script, call it under "
                    "`if __name__ == '__main__':` (worker processes re-import the script), or pass workers=1"
                ) from None
            seconds.setdefault(n, time.perf_counter() - t0)
    return seconds, data.info["corpus_id"]


def _show_progress(futures: dict, dirs: dict[str, Path], totals: dict[str, int], seconds: dict, t0: float) -> None:
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    cols = [TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stage]}"),
            TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, refresh_per_second=2) as bar:
        tasks = {n: bar.add_task(f"induction {n}", total=totals[n], stage="queued") for n in totals}
        while not all(f.done() for f in futures):
            for f, n in futures.items():
                if f.done():
                    seconds.setdefault(n, time.perf_counter() - t0)
                    bar.update(tasks[n], completed=totals[n], stage="done")
                else:
                    stage, done = _progress_state(dirs[n], totals[n])
                    bar.update(tasks[n], completed=done, stage=stage)
            time.sleep(1.0)
        for f, n in futures.items():
            bar.update(tasks[n], completed=totals[n], stage="done" if f.exception() is None else "failed")


def run_induction_experiment(preset: str | ExperimentPreset, out: Path | str, workers: int | None = None,
                             progress: bool = True, corpus: dict | None = None, device: str = "cpu",
                             in_process: bool | None = None) -> InductionResults:
    """Train, measure and analyse; writes out/results.json and returns the results (`train_all` for the rest)."""
    from circuitlab.experiments.induction.analysis import analyze_induction
    from circuitlab.induction.measure import read_measurements

    p = choose(PRESETS, preset, "induction preset") if isinstance(preset, str) else preset
    out = Path(out)
    t0 = time.perf_counter()
    train_seconds, corpus_id = train_all(p, out, workers, progress, corpus, device, in_process)
    t1 = time.perf_counter()
    result = analyze_induction(p, out)
    result.corpus = corpus_id
    measuring = {n: round(sum(m.seconds for m in read_measurements(out / "runs" / n / "measurements.jsonl").values()), 2)
                 for n in p.models}
    result.seconds = {"train_and_measure": t1 - t0, "per_model_done_at": train_seconds,
                      "per_model_measuring": measuring, "analysis": time.perf_counter() - t1, **result.seconds}
    result.save(out / "results.json")
    return result

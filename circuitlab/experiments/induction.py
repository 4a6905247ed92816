"""The induction-heads experiment (Olsson et al. 2022): train the 1L, 2L (3L in full) and smeared-key models with
dense checkpoints, measure every checkpoint, find the phase change, run the controls, ablations and behaviours,
and write results.json with claims and plot data (`induction_analysis` does the analysis).

Training runs in parallel worker processes (one model each, threads split between them); a finished run is
reused, an interrupted one resumed, and checkpoints already measured are not measured again.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from circuitlab.errors import CircuitlabError


@dataclass
class InductionPreset:
    """shared_model/shared_train: settings every model shares; models: name -> overrides (n_layers, smeared_keys,
    max_tokens); differs: what this preset changes relative to the papers, shown with every result."""

    name: str
    shared_model: dict
    shared_train: dict
    models: dict[str, dict]
    probe_windows: int = 1024  # the ICL score of single tokens needs many windows: its standard error is ~2.5/sqrt(n)
    ablation_points: int = 6
    task_steps: int = 1500
    differs: list[str] = field(default_factory=list)


_SMALL = dict(d_model=64, n_heads=4, d_head=16, n_ctx=128, d_vocab=512, positional_embedding_type="shortformer")
_TRAIN = dict(batch_size=8, lr=1e-2, warmup_steps=200, schedule="constant", eval_every=250, checkpoint_every=250,
              log_checkpoints=24)

PRESETS: dict[str, InductionPreset] = {
    # Calibrated on a 2-core CPU (README, 'Induction calibration'): the plain 2L model's induction heads start to
    # form near 9M tokens with these settings; smeared keys bring them within 1-3M tokens.
    "quick": InductionPreset(
        "quick", _SMALL, _TRAIN,
        {"2L": dict(n_layers=2, max_tokens=20_000_000), "1L": dict(n_layers=1, max_tokens=20_000_000),
         "1L-smeared": dict(n_layers=1, smeared_keys=True, max_tokens=4_000_000),
         "2L-smeared": dict(n_layers=2, smeared_keys=True, max_tokens=4_000_000)},
        differs=["context 128 tokens (paper: 8192); the ICL score uses tokens 12 and 125 (paper: 50 and 500 of 512)",
                 "d_model 64, 4 heads of 16, BPE vocabulary 512, Python standard library source (paper: d_model 768+,"
                 " 12 heads, vocabulary 2^16, web text)",
                 "20M tokens for 1L and 2L, 4M for the smeared-key models (paper: 10B)",
                 "constant learning rate 1e-2 after 200 warm-up steps, batch 8 (paper: cosine schedule, batch 2^19 tokens)"],
    ),
    # The papers' context and our default model width; not calibrated on a CPU (expect hours).
    "full": InductionPreset(
        "full", dict(_SMALL, d_model=128, n_heads=8, n_ctx=512, d_vocab=2048),
        dict(_TRAIN, batch_size=8, checkpoint_every=500),
        {"2L": dict(n_layers=2, max_tokens=100_000_000), "1L": dict(n_layers=1, max_tokens=100_000_000),
         "3L": dict(n_layers=3, max_tokens=100_000_000),
         "1L-smeared": dict(n_layers=1, smeared_keys=True, max_tokens=20_000_000),
         "2L-smeared": dict(n_layers=2, smeared_keys=True, max_tokens=20_000_000)},
        differs=["context 512 tokens (the ICL score's own 50 and 500; paper's models: 8192)",
                 "d_model 128, 8 heads of 16, BPE vocabulary 2048, Python standard library source",
                 "100M tokens (20M smeared) (paper: 10B)"],
    ),
}


def model_configs(preset: InductionPreset) -> dict[str, tuple]:
    from circuitlab.model import ModelConfig
    from circuitlab.training import TrainConfig

    out = {}
    for name, o in preset.models.items():
        m = ModelConfig(**{**preset.shared_model, **{k: v for k, v in o.items() if k != "max_tokens"}})
        out[name] = (m, TrainConfig(**{**preset.shared_train, "max_tokens": int(o["max_tokens"])}))
    return out


def _train_and_measure(name: str, mcfg: dict, tcfg: dict, run_dir: str, probe_path: str, threads: int,
                       corpus: dict) -> str:
    """Worker: train (resume / reuse) one model, then measure its checkpoints. Runs in its own process."""
    import torch
    from safetensors.torch import load_file

    from circuitlab.data import load_corpus, prepare_tokens
    from circuitlab.induction.measure import Probe, measure_run
    from circuitlab.model import ModelConfig
    from circuitlab.training import Run, TrainConfig, train

    torch.set_num_threads(threads)
    m, t = ModelConfig.from_dict(mcfg), TrainConfig.from_dict(tcfg)
    run_dir = Path(run_dir)
    done = False
    if (run_dir / "run.json").exists():
        run = Run.open(run_dir)
        if run.config.to_dict() != m.to_dict() or run.train_config.to_dict() != t.to_dict():
            raise CircuitlabError(f"{run_dir} holds a run with other settings: remove it or use another --out")
        done = run.finished
    if not done:
        data = prepare_tokens(load_corpus(**corpus), m.d_vocab, t.heldout_fraction)
        train(m, t, data, run_dir, resume=(run_dir / "run.json").exists(), progress=False)
    p = load_file(str(probe_path))
    measure_run(Run.open(run_dir), Probe(p["windows"], p["pca_positions"], p["allowed"]),
                run_dir / "measurements.jsonl")
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


def train_all(preset: InductionPreset, out: Path, workers: int | None = None, progress: bool = True,
              corpus: dict | None = None) -> dict:
    """Train and measure every model of the preset under out/runs/NAME, on the default corpus or
    `load_corpus(**corpus)`. Returns {name: seconds from the start until it was done}."""
    import numpy as np
    from safetensors.torch import save_file

    from circuitlab.circuits.summary import common_token_pool
    from circuitlab.data import load_corpus, prepare_tokens
    from circuitlab.induction.measure import Probe
    from circuitlab.training.trainer import sample_windows

    cfgs = model_configs(preset)
    first_m, first_t = next(iter(cfgs.values()))
    corpus = corpus or {}
    data = prepare_tokens(load_corpus(**corpus), first_m.d_vocab, first_t.heldout_fraction)  # fills the token cache
    out.mkdir(parents=True, exist_ok=True)
    probe_path = out / "probe.safetensors"
    if not probe_path.exists():
        windows = sample_windows(data.val, preset.probe_windows, first_m.n_ctx, np.random.default_rng(12345), True)
        probe = Probe.make(windows, common_token_pool(data.train, first_m.d_vocab))
        tmp = probe_path.with_suffix(".tmp")
        save_file({"windows": probe.windows, "pca_positions": probe.pca_positions, "allowed": probe.allowed}, str(tmp))
        tmp.replace(probe_path)
    cpus = os.cpu_count() or 1
    workers = workers or max(1, min(len(cfgs), 2 if cpus <= 4 else cpus // 2))
    threads = max(1, cpus // workers)
    totals = {n: t.total_steps(m.n_ctx) for n, (m, t) in cfgs.items()}
    # longest first, so the short smeared-key runs fill in behind the long ones
    order = sorted(cfgs, key=lambda n: -cfgs[n][1].max_tokens * (1 + cfgs[n][0].n_layers))
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_train_and_measure, n, cfgs[n][0].to_dict(), cfgs[n][1].to_dict(),
                               str(out / "runs" / n), str(probe_path), threads, corpus): n for n in order}
        if progress:
            _show_progress(futures, out, totals, seconds, t0)
        for f, n in futures.items():
            f.result()  # re-raises a worker's error
            seconds.setdefault(n, time.perf_counter() - t0)
    return seconds


def _show_progress(futures: dict, out: Path, totals: dict[str, int], seconds: dict, t0: float) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
                    stage, done = _progress_state(out / "runs" / n, totals[n])
                    bar.update(tasks[n], completed=done, stage=stage)
            time.sleep(1.0)
        for f, n in futures.items():
            bar.update(tasks[n], completed=totals[n], stage="done" if f.exception() is None else "failed")


def run_induction_experiment(preset: str | InductionPreset, out: Path | str, workers: int | None = None,
                             progress: bool = True, corpus: dict | None = None) -> dict:
    """Train, measure and analyse; writes out/results.json and returns it."""
    from circuitlab.experiments.induction_analysis import analyze_induction
    from circuitlab.training.checkpoints import atomic_write_text

    p = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out)
    t0 = time.perf_counter()
    train_seconds = train_all(p, out, workers, progress, corpus)
    t1 = time.perf_counter()
    result = analyze_induction(p, out)
    result["seconds"] = {"train_and_measure": t1 - t0, "per_model_done_at": train_seconds,
                         "analysis": time.perf_counter() - t1}
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    return result

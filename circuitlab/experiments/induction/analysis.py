"""Analysis of the induction-heads experiment's measured runs: phase-change windows, controls, per-token-loss PCA,
ablations over checkpoints, behaviours and attention-viewer data (Olsson et al. 2022)."""

from __future__ import annotations

import time

from pathlib import Path

import numpy as np
import torch

from circuitlab.experiments.induction.claims import COPYING_NAME, induction_claims, value_at
from circuitlab.experiments.induction.results import (
    AblationPoint, Ablations, Behaviours, CurvePoint, FinalScores, ICLPositions, InductionResults, LossByPosition,
    ModelCurves, PCAResult, PhaseWindows, TaskTraining, TrainLossPoint, ViewerPrompt,
)
from circuitlab.heads import Head, induction_heads
from circuitlab.induction.icl import icl_positions, pca_pivot, per_token_pca
from circuitlab.induction.measure import Measurement, pca_matrix, read_measurements
from circuitlab.induction.phase import Window, jump_window, loss_bump
from circuitlab.series import running_median as smooth
from circuitlab.training import Run
from circuitlab.training.run import finished_run
from circuitlab.training.presets import ExperimentPreset

COPYING_PASSAGE = (
    "def load_zorblax_quintile(path):\n"
    '    """Read a zorblax_quintile table from path."""\n'
    "    with open(path) as f:\n"
    "        zorblax_quintile = parse(f.read())\n"
    "    return zorblax_quintile\n"
)


def read_rows(run_dir: Path) -> list[Measurement]:
    done = read_measurements(run_dir / "measurements.jsonl")
    return [done[s] for s in sorted(done)]


def row_heads(row: Measurement) -> list[Head]:
    """The induction heads of one checkpoint (`circuitlab.heads.induction_heads`)."""
    return induction_heads(torch.tensor(row.induction)) if row.induction is not None else []


def phase_windows(tokens: list[int], best_induction: list[float] | None, icl: list[float]) -> PhaseWindows:
    """The phase-change windows (10% -> 90% of the change) of the smoothed best induction score and ICL score."""
    ind = jump_window(tokens, smooth(best_induction)) if best_induction is not None else Window(None, None, None)
    return PhaseWindows(ind, jump_window(tokens, smooth(icl), increasing=False))


def analyze_ablations(run: Run, rows: list[Measurement], windows: torch.Tensor, group: list[Head],
                      points: int) -> Ablations:
    """Pattern-preserving ablation of every head (and of the induction-head group) at `points` checkpoints
    log-spaced over training, plus a full ablation at the last checkpoint."""
    from circuitlab.induction.ablation import ablate_heads

    trained = [r for r in rows if r.step > 0]
    idx = np.unique(np.round(np.geomspace(1, len(trained), points)).astype(int) - 1)
    series = []
    for i in idx:
        r = trained[i]
        a = ablate_heads(run.model(r.step), windows, group, preserve_patterns=True)
        series.append(AblationPoint(**vars(a), step=r.step, tokens=r.tokens))
    full = ablate_heads(run.model(), windows, group, preserve_patterns=False)
    return Ablations(group, series, full)


def task_models(task_steps: int, init_noise: int = 0, seed: int = 0) -> dict[str, tuple]:
    """The behaviours' small models on the synthetic tasks: {task name: (task, ModelConfig, training steps)}.
    init_noise: the float-noise check's run (`experiments/noise.py`; the preset's settings["init_noise"]); seed: the
    init's and the batches' (`seeds.with_seed`; settings["seed"])."""
    from circuitlab.data.synthetic import pattern_task, translation_task
    from circuitlab.model import ModelConfig

    small = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, init_noise=init_noise, seed=seed)
    translation, pattern = translation_task(), pattern_task()
    return {"translation": (translation, ModelConfig(**small, n_ctx=translation.n_ctx, d_vocab=translation.d_vocab),
                            task_steps),
            "pattern": (pattern, ModelConfig(**small, n_ctx=pattern.n_ctx, d_vocab=pattern.d_vocab, smeared_keys=True),
                        2 * task_steps)}


def train_task_model(out: Path, task, model_cfg, steps: int):
    """Train (or reuse) a small model on a synthetic task with the one training loop, in OUT/tasks/NAME; returns
    (model, training). `train_all` trains them in its worker processes beside the language models. The batches are
    drawn from the model's seed."""
    from circuitlab.training import SequenceTaskTraining, TrainConfig, train

    run_dir = out / "tasks" / task.name
    cfg = TrainConfig(batch_size=32, lr=3e-3, warmup_steps=100, schedule="constant", beta2=0.98, max_steps=steps,
                      eval_every=100, checkpoint_every=steps, log_checkpoints=0, seed=model_cfg.seed)
    training = SequenceTaskTraining(task)
    run = finished_run(run_dir, model_cfg, cfg, training.spec()) or \
        train(model_cfg, cfg, training, run_dir, resume=(run_dir / "run.json").exists(), progress=False)
    return run.model(), TaskTraining(str(run_dir), run.checkpoints[-1], run.metrics)


def behaviours(out: Path, run: Run, head: Head | None, task_steps: int, init_noise: int = 0,
               seed: int = 0) -> Behaviours:
    from circuitlab.induction.behaviours import copying_behaviour, pattern_behaviour, translation_behaviour

    copying, skipped = None, "no induction head to examine"
    if head is not None:
        try:
            copying, skipped = copying_behaviour(run.model(), run.tokenizer, COPYING_PASSAGE, COPYING_NAME, head), None
        except ValueError as e:  # the passage does not fit a tiny context
            skipped = str(e)
    tasks = task_models(task_steps, init_noise, seed)
    task, cfg, steps = tasks["translation"]
    model, t_info = train_task_model(out, task, cfg, steps)
    translation = translation_behaviour(model, task)
    task, cfg, steps = tasks["pattern"]
    model, p_info = train_task_model(out, task, cfg, steps)
    return Behaviours(translation, t_info, pattern_behaviour(model, task), p_info, copying, skipped)


@torch.no_grad()
def attention_viewer(run: Run, windows: torch.Tensor, copy_text: str) -> list[ViewerPrompt]:
    """Prompts for the report's attention viewer: held-out text repeated, and the rare-identifier passage; every
    head's pattern, rounded to 3 decimals."""
    from circuitlab.circuits.heads import attention_patterns

    model, tok = run.model(), run.tokenizer
    decode = lambda t: "<bos>" if t == 0 else tok.decode([int(t)])  # noqa: E731
    half = windows[0, 1 : 1 + min(30, (model.cfg.n_ctx - 1) // 2)]
    prompts = [("held-out text, repeated", torch.cat([torch.zeros(1, dtype=torch.long), half, half])[None]),
               ("rare identifier, repeated", torch.tensor([[0] + tok.encode(copy_text).ids[: model.cfg.n_ctx - 1]]))]
    out = []
    for title, tokens in prompts:
        p = attention_patterns(model, tokens)[:, 0]  # [layer, head, q, k]
        out.append(ViewerPrompt(title, [decode(t) for t in tokens[0].tolist()], np.round(p.numpy(), 3).tolist()))
    return out


def model_curves(run: Run, rows: list[Measurement]) -> ModelCurves:
    final = rows[-1]
    return ModelCurves(
        config=run.config.to_dict(), train=run.train_config.to_dict(),
        curve=[CurvePoint(r.tokens, r.step, r.heldout_loss, r.icl, r.best_induction, r.best_prefix_matching,
                          r.repeat_first_half_loss, r.repeat_second_half_loss) for r in rows],
        train_loss=[TrainLossPoint(m["tokens"], m["train_loss"]) for m in run.metrics if m.get("train_loss") is not None],
        final=FinalScores(final.induction, final.prefix_matching, final.copying, final.previous_token,
                          final.duplicate_token, final.icl, final.heldout_loss, final.tokens),
        induction_heads=row_heads(final),
        windows=phase_windows([r.tokens for r in rows],
                              [r.best_induction for r in rows] if final.best_induction is not None else None,
                              [r.icl for r in rows]),
        stopped=(run.stopped or {}).get("reason"))


def analyze_induction(preset: ExperimentPreset, out: Path) -> InductionResults:
    from safetensors.torch import load_file

    parts: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        parts[name] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()

    runs = {n: Run.open(out / "runs" / n) for n in preset.models}
    rows = {n: read_rows(out / "runs" / n) for n in runs}
    probe = load_file(str(out / "probe.safetensors"))
    n_ctx = runs[next(iter(runs))].config.n_ctx
    early, late = icl_positions(n_ctx)
    models = {n: model_curves(runs[n], rs) for n, rs in rows.items()}
    main = "2L"
    r2 = rows[main]
    w = models[main].windows
    train_1l, train_2l = models["1L"].train_loss, models[main].train_loss
    bump = loss_bump([p.tokens for p in train_1l], smooth([p.train_loss for p in train_1l]),
                     [p.tokens for p in train_2l], smooth([p.train_loss for p in train_2l]), w.induction)
    traj, var = per_token_pca(pca_matrix(r2))
    pivot = pca_pivot(traj)
    # loss by position at three moments: before the window, after it, and at the end
    moments = {"start": r2[min(1, len(r2) - 1)].tokens, "before": w.induction.start, "after": w.induction.end, "final": r2[-1].tokens}
    moments = {k: t for k, t in moments.items() if t is not None}
    by_pos = {n: {k: value_at(rows[n], t, "loss_by_position") for k, t in moments.items()} for n in ("1L", main)}
    lap("curves_windows_bump_pca")
    group = row_heads(r2[-1])
    windows = probe["windows"][:512]
    ablation = analyze_ablations(runs[main], r2, windows, group, preset.settings["ablation_points"])
    lap("ablations_over_checkpoints")
    final_induction = torch.tensor(r2[-1].induction)
    head = max(group, key=lambda hd: float(final_induction[hd])) if group else None
    behaved = behaviours(out, runs[main], head, preset.settings["task_steps"], preset.settings.get("init_noise", 0),
                         preset.settings.get("seed", 0))
    lap("behaviours")
    viewer = attention_viewer(runs[main], probe["windows"], COPYING_PASSAGE)
    lap("attention_viewer")
    result = InductionResults(
        experiment="induction", preset=preset.name, differs_from_paper=list(preset.differs),
        icl_positions=ICLPositions(early, late, n_ctx,
                                   f"ICL score = loss of token {late} - loss of token {early} (paper: 500 and 50 of 512)"),
        models=models, loss_bump=bump,
        pca=PCAResult(traj.tolist(), var.tolist(), pivot, r2[pivot].tokens, [r.tokens for r in r2], len(r2[0].pca_losses)),
        loss_by_position=LossByPosition(moments, by_pos), ablation=ablation, behaviours=behaved, attention_viewer=viewer,
    )
    result.claims = induction_claims(result)
    lap("claims")
    result.seconds = {"analysis_parts": parts}
    return result

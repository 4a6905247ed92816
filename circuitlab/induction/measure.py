"""Everything Olsson et al. (2022) track over training, measured at one checkpoint, and over every checkpoint of a
run (cached per run in `measurements.jsonl`, so re-running measures only new checkpoints).

At each checkpoint, on a fixed set of held-out windows and fixed synthetic sequences:
- held-out loss, ICL score (loss(late token) - loss(early token)) and the loss by token position;
- per head: induction, duplicate-token, prefix-matching, copying and previous-token scores (`circuits.heads`);
- loss on the first and the second half of repeated random tokens;
- the per-token losses for the PCA: one fixed random token per held-out window (the paper: 10,000 examples).
Everything here runs without gradients; the ICL and PCA losses come from one batched forward pass.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from circuitlab.circuits.heads import head_scores
from circuitlab.induction.icl import icl_score, per_token_loss, repeated_tokens_loss
from circuitlab.results import Result


@dataclass
class Probe:
    """The fixed inputs every checkpoint of a run is measured on."""

    windows: Tensor  # [n, n_ctx] held-out windows (BOS first)
    pca_positions: Tensor  # [n] one loss index per window (index i = predicting token i + 1)
    allowed: Tensor | None  # token pool for the random-token sequences (the paper skips rare and common tokens)

    @classmethod
    def make(cls, windows: Tensor, allowed: Tensor | None = None, seed: int = 0) -> "Probe":
        g = torch.Generator().manual_seed(seed)
        pos = torch.randint(0, windows.shape[1] - 1, (len(windows),), generator=g)
        return cls(windows, pos, allowed)


@dataclass
class Measurement(Result):
    """Everything measured at one checkpoint. Head scores are [n_layers][n_heads] (None for a 0-layer model);
    loss_by_position[i]: mean loss of predicting token i + 2; pca_losses: the loss of one fixed token per window."""

    step: int
    tokens: int
    heldout_loss: float
    icl: float
    icl_early: int
    icl_late: int
    early_loss: float
    late_loss: float
    loss_by_position: list[float]
    pca_losses: list[float]
    repeat_first_half_loss: float
    repeat_second_half_loss: float
    induction: list[list[float]] | None = None
    duplicate_token: list[list[float]] | None = None
    prefix_matching: list[list[float]] | None = None
    copying: list[list[float]] | None = None
    previous_token: list[list[float]] | None = None
    best_induction: float | None = None
    best_prefix_matching: float | None = None
    seconds: float = 0.0  # how long measuring this checkpoint took (0 in rows written before it was recorded)


@torch.no_grad()
def measure_checkpoint(model, probe: Probe, step: int = 0, tokens: int = 0) -> Measurement:
    """One checkpoint's measurements."""
    t0 = time.perf_counter()
    losses = per_token_loss(model, probe.windows)
    icl = icl_score(model, probe.windows, losses)
    first, second = repeated_tokens_loss(model, allowed=probe.allowed)
    m = Measurement(step=step, tokens=tokens, heldout_loss=float(losses.mean()), icl=icl.icl_score,
                    icl_early=icl.early, icl_late=icl.late, early_loss=icl.early_loss, late_loss=icl.late_loss,
                    loss_by_position=icl.loss_by_position,
                    pca_losses=losses[torch.arange(len(losses)), probe.pca_positions].tolist(),
                    repeat_first_half_loss=first, repeat_second_half_loss=second)
    if model.cfg.n_layers > 0:
        s = head_scores(model, probe.windows[:10], bos=0, allowed=probe.allowed)
        for name in ("induction", "duplicate_token", "prefix_matching", "copying", "previous_token"):
            setattr(m, name, getattr(s, name).tolist())
        m.best_induction = float(s.induction.max())
        m.best_prefix_matching = float(s.prefix_matching.max())
    m.seconds = round(time.perf_counter() - t0, 4)
    return m


def read_measurements(path: Path | str) -> dict[int, Measurement]:
    """The measurements saved at `path` by step; a line cut off by an interruption is skipped (measured again)."""
    path = Path(path)
    done: dict[int, Measurement] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                m = Measurement.from_json(json.loads(line))
                done[m.step] = m
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return done


def measure_run(run, probe: Probe, path: Path | str, steps: list[int] | None = None,
                progress=None) -> list[Measurement]:
    """Measure every checkpoint of `run` (a `training.Run`) not yet in the JSONL file at `path`; returns all of them
    sorted by step. A row is appended as soon as it is measured, so an interrupted pass loses nothing."""
    path = Path(path)
    done = read_measurements(path)
    todo = [s for s in (steps if steps is not None else run.checkpoints) if s not in done]
    tokens_per_step = run.train_config.batch_size * run.config.n_ctx
    with path.open("a") as f:
        for step in todo:
            m = measure_checkpoint(run.model(step), probe, step, step * tokens_per_step)
            f.write(json.dumps(m.to_json()) + "\n")
            f.flush()
            done[step] = m
            if progress:
                progress()
    return [done[s] for s in sorted(done)]


def pca_matrix(rows: list[Measurement]) -> np.ndarray:
    """[checkpoints, examples] per-token losses, for `icl.per_token_pca`."""
    return np.asarray([r.pca_losses for r in rows], dtype=np.float64)

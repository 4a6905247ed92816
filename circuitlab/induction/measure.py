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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from circuitlab.circuits.heads import head_scores
from circuitlab.induction.icl import icl_score, per_token_loss, repeated_tokens_loss


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


@torch.no_grad()
def measure_checkpoint(model, probe: Probe) -> dict:
    """One row of measurements (JSON-ready). Head scores are [n_layers][n_heads] lists."""
    losses = per_token_loss(model, probe.windows)
    icl = icl_score(model, probe.windows, losses)
    row = {"heldout_loss": float(losses.mean()), "icl": icl.icl_score, "icl_early": icl.early, "icl_late": icl.late,
           "early_loss": icl.early_loss, "late_loss": icl.late_loss, "loss_by_position": icl.loss_by_position,
           "pca_losses": losses[torch.arange(len(losses)), probe.pca_positions].tolist()}
    if model.cfg.n_layers > 0:
        s = head_scores(model, probe.windows[:10], bos=0, allowed=probe.allowed)
        for name in ("induction", "duplicate_token", "prefix_matching", "copying", "previous_token"):
            row[name] = getattr(s, name).tolist()
        row["best_induction"] = float(s.induction.max())
        row["best_prefix_matching"] = float(s.prefix_matching.max())
    first, second = repeated_tokens_loss(model, allowed=probe.allowed)
    row["repeat_first_half_loss"], row["repeat_second_half_loss"] = first, second
    return row


def measure_run(run, probe: Probe, path: Path | str, steps: list[int] | None = None, progress=None) -> list[dict]:
    """Measure every checkpoint of `run` (a `training.Run`) not yet in the JSONL file at `path`; returns all rows
    sorted by step. A row is appended as soon as it is measured, so an interrupted pass loses nothing."""
    path = Path(path)
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
                done[r["step"]] = r
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut off by an interruption: measured again below
    todo = [s for s in (steps if steps is not None else run.checkpoints) if s not in done]
    tokens_per_step = run.train_config.batch_size * run.config.n_ctx
    with path.open("a") as f:
        for step in todo:
            row = {"step": step, "tokens": step * tokens_per_step, **measure_checkpoint(run.model(step), probe)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[step] = row
            if progress:
                progress()
    return [done[s] for s in sorted(done)]


def pca_matrix(rows: list[dict]) -> np.ndarray:
    """[checkpoints, examples] per-token losses, for `icl.per_token_pca`."""
    return np.asarray([r["pca_losses"] for r in rows], dtype=np.float64)

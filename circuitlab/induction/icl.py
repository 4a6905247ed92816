"""In-context learning measured on held-out text (Olsson et al. 2022, 'In-context learning score').

ICL score = loss of the 500th token of a 512-token context minus loss of the 50th token, averaged over examples;
more negative = more in-context learning. A model with a shorter context uses the same fractions of its context
(`icl_positions`), and says which positions it used wherever the score is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuitlab.circuits.heads import repeated_random_tokens
from circuitlab.results import Result

PAPER_CONTEXT, PAPER_EARLY, PAPER_LATE = 512, 50, 500


def icl_positions(n_ctx: int) -> tuple[int, int]:
    """(early, late) token indices (1-based, the k-th token of the context) scaled from the paper's (50, 500) of 512."""
    if n_ctx >= PAPER_CONTEXT:
        return PAPER_EARLY, PAPER_LATE
    return max(2, round(PAPER_EARLY * n_ctx / PAPER_CONTEXT)), round(PAPER_LATE * n_ctx / PAPER_CONTEXT)


@torch.no_grad()
def per_token_loss(model, windows: Tensor, batch_size: int = 32) -> Tensor:
    """[n_windows, n_ctx - 1]: entry i is the loss of predicting token i + 1 (the (i + 2)-th token) from tokens 0..i."""
    out = [model(c.to(model.W_E.device), return_type="loss", loss_per_token=True).float().cpu()
           for c in windows.split(batch_size)]
    return torch.cat(out)


def loss_of_token(losses: Tensor, k: int) -> Tensor:
    """Per-window loss of the k-th token of the context (1-based; token 1 is BOS and is never predicted)."""
    return losses[:, k - 2]


@dataclass
class ICLMeasurement(Result):
    """At one checkpoint: icl_score = loss(token late) - loss(token early) (nats, mean over windows), the two
    losses, the mean loss by position (index i = token i + 2), and the settings."""

    icl_score: float
    early_loss: float
    late_loss: float
    early: int
    late: int
    n_windows: int
    loss_by_position: list[float]


def icl_score(model, windows: Tensor, losses: Tensor | None = None) -> ICLMeasurement:
    losses = per_token_loss(model, windows) if losses is None else losses
    early, late = icl_positions(windows.shape[1])
    e, l_ = loss_of_token(losses, early).mean(), loss_of_token(losses, late).mean()
    return ICLMeasurement(icl_score=float(l_ - e), early_loss=float(e), late_loss=float(l_), early=early, late=late,
                          n_windows=len(windows), loss_by_position=losses.mean(0).tolist())


@torch.no_grad()
def repeated_tokens_loss(model, n_tokens: int | None = None, batch: int = 10, bos: int | None = 0, seed: int = 0,
                         allowed: Tensor | None = None) -> tuple[float, float]:
    """(loss on the first half, loss on the second half) of BOS + N random tokens + the same N again: induction
    heads make the second half nearly free. The repeat's first token cannot be predicted by copying (nothing
    before it says the repeat starts) and is left out of both halves' means, as is the first half's first token."""
    off = 1 if bos is not None else 0
    n = n_tokens or (model.cfg.n_ctx - off) // 2
    tokens = repeated_random_tokens(n, 2, batch, model.cfg.d_vocab, bos, seed, allowed).to(model.W_E.device)
    losses = model(tokens, return_type="loss", loss_per_token=True).float()  # index i predicts token i + 1
    first = losses[:, off : off + n - 1].mean()  # predicting tokens off + 1 .. off + n - 1
    second = losses[:, off + n :].mean()  # predicting tokens off + n + 1 .. off + 2n - 1
    return float(first), float(second)


def per_token_pca(loss_matrix: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Olsson et al. 2022, 'per-token losses' PCA: rows = checkpoints, columns = fixed (example, token) losses.
    Returns (projection [n_checkpoints, n_components], explained variance ratios)."""
    X = np.asarray(loss_matrix, dtype=np.float64)
    X = X - X.mean(0, keepdims=True)
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    var = S ** 2
    return U[:, :n_components] * S[:n_components], var[:n_components] / max(var.sum(), 1e-30)


def pca_pivot(trajectory: np.ndarray) -> int:
    """Index of the checkpoint where the 2-D trajectory turns most sharply (largest angle between the incoming and
    outgoing steps, ignoring steps shorter than 5% of the longest)."""
    d = np.diff(trajectory, axis=0)
    norms = np.linalg.norm(d, axis=1)
    best, best_angle = 0, -1.0
    for i in range(1, len(d)):
        if min(norms[i - 1], norms[i]) < 0.05 * norms.max():
            continue
        cos = float(d[i - 1] @ d[i] / (norms[i - 1] * norms[i]))
        angle = float(np.arccos(np.clip(cos, -1, 1)))
        if angle > best_angle:
            best, best_angle = i, angle
    return best

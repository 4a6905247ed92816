"""Composition scores between heads in different layers (Elhage et al. 2021, 'Composition').

For a head h1 in an earlier layer and h2 in a later one, with W_OV = W_V W_O and W_QK = W_Q W_K^T (row layout):
  Q-composition  ||W_OV^{h1} W_QK^{h2}||   / (||W_OV^{h1}|| ||W_QK^{h2}||)     h1's output feeds h2's queries
  K-composition  ||W_OV^{h1} W_QK^{h2 T}|| / (...)                            h1's output feeds h2's keys
  V-composition  ||W_OV^{h1} W_OV^{h2}||   / (...)                            h1's output feeds h2's values
(Frobenius norms, computed from the factored forms by TransformerLens's `composition_scores`.) Random matrices of
the same shapes already score above zero, so the expected random score is measured and kept beside the raw scores:
`excess(mode)` subtracts it, once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformer_lens import FactoredMatrix
from transformer_lens.utilities.matrix import composition_scores as tl_composition_scores

from circuitlab.heads import Head
from circuitlab.results import Result


@dataclass
class CompositionScores(Result):
    """q, k, v: [n_layers, n_heads, n_layers, n_heads], the raw score of (layer1, head1) -> (layer2, head2); NaN
    where layer1 >= layer2. random_baseline: the mean score of random matrices of the same shapes."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    random_baseline: float

    def excess(self, mode: str) -> torch.Tensor:
        """The scores of one mode minus the random baseline."""
        return getattr(self, mode) - self.random_baseline

    def top(self, mode: str, n: int = 5) -> list["CompositionEdge"]:
        """The n largest raw scores of one mode, largest first."""
        s = getattr(self, mode)
        flat = torch.nan_to_num(s, nan=-float("inf")).flatten()
        out = []
        for i in flat.argsort(descending=True)[:n].tolist():
            l1, h1, l2, h2 = torch.unravel_index(torch.tensor(i), s.shape)
            if torch.isfinite(flat[i]):
                out.append(CompositionEdge(Head(int(l1), int(h1)), Head(int(l2), int(h2)), float(flat[i])))
        return out


@dataclass
class CompositionEdge(Result):
    """A composition score from a sender head's output (earlier layer) into a receiver head's Q, K or V input."""

    sender: Head
    receiver: Head
    score: float


@functools.lru_cache(maxsize=64)
def random_composition_baseline(d_model: int, d_head: int, samples: int | None = None, seed: int = 0) -> float:
    """Mean composition score of two random rank-d_head factored d_model x d_model matrices (Gaussian factors).
    By default as many samples as keep the cost near a 200-sample 128 x 16 baseline (at most 200, at least 8):
    for large matrices the score concentrates, so few samples suffice."""
    if samples is None:
        samples = max(8, min(200, int(200 * (128 * 128 * 16) / (d_model * d_model * d_head))))
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(samples, *s, generator=g)  # noqa: E731
    a = FactoredMatrix(r(d_model, d_head), r(d_head, d_model))
    b = FactoredMatrix(r(d_model, d_head), r(d_head, d_model))
    return float(tl_composition_scores(a, b, broadcast_dims=False).mean())


@torch.no_grad()
def composition_scores(model, baseline_samples: int | None = None) -> CompositionScores:
    W_Q, W_K, W_V, W_O = model.W_Q, model.W_K, model.W_V, model.W_O
    OV = FactoredMatrix(W_V, W_O)
    QK = FactoredMatrix(W_Q, W_K.transpose(-2, -1))
    L = W_Q.shape[0]
    later = torch.arange(L)[:, None, None, None] < torch.arange(L)[None, None, :, None]  # layer1 < layer2
    base = random_composition_baseline(W_Q.shape[-2], W_Q.shape[-1], baseline_samples)

    def score(right: FactoredMatrix) -> torch.Tensor:
        s = tl_composition_scores(OV, right)  # [L, H, L, H]
        return torch.where(later.expand_as(s), s, torch.nan)

    return CompositionScores(q=score(QK), k=score(QK.T), v=score(OV), random_baseline=base)

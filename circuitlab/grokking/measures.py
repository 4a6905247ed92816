"""Progress measures of grokking (Nanda et al. 2023, section 5) and the frequency ablations (section 4.2).

- Restricted loss: keep only the constant and the cos/sin(w_k (a + b)) terms (over the (a, b) grid, for each
  output c) of the logits, for the key frequencies k; cross-entropy on all p^2 pairs. Falls before test loss does.
- Excluded loss: remove exactly those key terms, keep the rest; cross-entropy on the training set. Rises while the
  circuit forms (memorisation alone can no longer explain the training data).
- Gini coefficient of the per-frequency norms of W_E and of W_L = W_out W_U: sparsity in the Fourier basis.
- Total sum of squared weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab.grokking.fourier import (
    all_inputs, embedding_fourier_norms, fourier_2d, fourier_basis, frequency_indices, frequency_norms,
    readout_fourier_norms,
)
from circuitlab.model.last_position import last_position_logits
from circuitlab.results import Result
from circuitlab.series import running_median


def _a_plus_b_directions(p: int, ks: list[int]) -> Tensor:
    """[2 len(ks), p*p]: cos(w_k (a + b)) and sin(w_k (a + b)) over the (a, b) grid, unit norm (mutually orthogonal)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    s = (a + b).flatten().double()
    d = []
    for k in ks:
        d += [torch.cos(2 * math.pi * k * s / p), torch.sin(2 * math.pi * k * s / p)]
    D = torch.stack(d) if d else torch.zeros(0, p * p, dtype=torch.float64)
    return (D / D.norm(dim=1, keepdim=True).clamp_min(1e-30)).float()


def key_terms(logits: Tensor, p: int, ks: list[int]) -> Tensor:
    """The part of logits [p*p, p] along cos/sin(w_k (a + b)) for k in ks (projection, per output column)."""
    D = _a_plus_b_directions(p, ks).to(logits)
    return D.T @ (D @ logits)


def restricted_logits(logits: Tensor, p: int, ks: list[int]) -> Tensor:
    return logits.mean(0, keepdim=True) + key_terms(logits - logits.mean(0, keepdim=True), p, ks)


def excluded_logits(logits: Tensor, p: int, ks: list[int]) -> Tensor:
    return logits - key_terms(logits, p, ks)


def cross_entropy(logits: Tensor, p: int, rows: Tensor | None = None) -> float:
    """Mean cross-entropy of [p*p, >= p] logits (rows a*p + b) against (a + b) mod p, over `rows` (default all)."""
    labels = (torch.arange(p * p) // p + torch.arange(p * p) % p) % p
    logits = logits[:, :p].float()
    if rows is not None:
        logits, labels = logits[rows], labels[rows]
    return float(F.cross_entropy(logits, labels.to(logits.device)))


def gini(x: Tensor) -> float:
    """Gini coefficient sum_ij |x_i - x_j| / (2 n sum_i x_i): 0 = all equal, -> 1 = one non-zero entry."""
    x = x.detach().double().flatten().abs()
    return float((x[:, None] - x[None, :]).abs().sum() / (2 * len(x) * x.sum().clamp_min(1e-30)))


@torch.no_grad()
def all_logits(model, p: int) -> Tensor:
    """[p*p, d_vocab] logits at '=' for every pair."""
    return last_position_logits(model, all_inputs(p).to(model.W_E.device))


@dataclass
class ProgressMeasures(Result):
    """At one checkpoint (losses in nats)."""

    epoch: int
    train_loss: float
    test_loss: float
    restricted_loss: float
    excluded_loss: float
    gini_W_E: float
    gini_W_L: float
    weight_norm: float


@torch.no_grad()
def progress_measures(model, p: int, ks: list[int], train: Tensor, test: Tensor, epoch: int = 0) -> ProgressMeasures:
    logits = all_logits(model, p)
    return ProgressMeasures(
        epoch=epoch, train_loss=cross_entropy(logits, p, train), test_loss=cross_entropy(logits, p, test),
        restricted_loss=cross_entropy(restricted_logits(logits, p, ks), p),
        excluded_loss=cross_entropy(excluded_logits(logits, p, ks), p, train),
        gini_W_E=gini(frequency_norms(embedding_fourier_norms(model, p))),
        gini_W_L=gini(frequency_norms(readout_fourier_norms(model, p))),
        weight_norm=float(sum((w.double() ** 2).sum() for w in model.parameters())),
    )


@dataclass
class FrequencyAblation(Result):
    """Test loss with the neurons' activations (as functions of (a, b)) keeping everything, with the key
    frequencies' 2-D Fourier components removed, and with everything but them removed (the constant kept)."""

    key_frequencies: list[int]
    full_loss: float
    without_key_frequencies: float
    only_key_frequencies: float
    uniform_loss: float


@torch.no_grad()
def frequency_ablation(model, p: int, ks: list[int], rows: Tensor | None = None) -> FrequencyAblation:
    """Ablate in the 2-D Fourier basis of the MLP activations (Nanda et al. 2023, section 4.2), over `rows`."""
    tokens = all_inputs(p).to(model.W_E.device)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in ("blocks.0.hook_resid_mid",
                                                                         "blocks.0.mlp.hook_post"))
    resid_mid = cache["blocks.0.hook_resid_mid"][:, -1]
    acts = cache["blocks.0.mlp.hook_post"][:, -1].reshape(p, p, -1)
    mlp = model.blocks[0].mlp
    keep = torch.zeros(p, p, dtype=torch.bool)
    for k in ks:
        i = torch.tensor(frequency_indices(k))
        keep[i[:, None], i[None, :]] = True
    keep[0, 0] = True  # the constant term belongs to neither side

    def loss_with(mask: Tensor) -> float:
        Fb = fourier_basis(p).to(acts)
        coef = fourier_2d(acts, p) * mask[..., None].to(acts)
        a = torch.einsum("ia,jb,ij...->ab...", Fb, Fb, coef).reshape(p * p, -1)  # back to (a, b)
        logits = (resid_mid + a @ mlp.W_out + mlp.b_out) @ model.W_U
        return cross_entropy(logits, p, rows)

    full = torch.ones(p, p, dtype=torch.bool)
    without = ~keep
    without[0, 0] = True
    return FrequencyAblation(key_frequencies=list(ks), full_loss=loss_with(full), without_key_frequencies=loss_with(without),
                             only_key_frequencies=loss_with(keep), uniform_loss=math.log(p))


@dataclass
class Phases(Result):
    """Epoch boundaries (Nanda et al. 2023, section 5.2): memorisation [0, memorised), circuit formation
    [memorised, cleanup), cleanup [cleanup, grokked]. With the test loss smoothed by a running median:
      memorised: where the test loss peaks after the training set is fitted (generalisation at its worst);
      cleanup:   the last epoch before grokking at which the test loss is still at or above its median level over
                 [memorised, grokked] (it leaves the plateau for the final descent);
      grokked:   the first epoch with test accuracy >= 99%.
    train_fit: the first epoch with train accuracy >= 99%. None where the run never got there.
    formation_fall / cleanup_fall: the shares of the test loss's fall from its peak to grokking that happen during
    circuit formation and during cleanup. The paper's test loss stays on a plateau while the circuit forms and
    collapses in cleanup; a test loss that falls steadily falls about as much in each."""

    train_fit: int | None
    memorised: int | None
    cleanup: int | None
    grokked: int | None
    formation_fall: float | None = None
    cleanup_fall: float | None = None

    @property
    def found(self) -> bool:
        return None not in (self.memorised, self.cleanup, self.grokked)


def detect_phases(metrics: list[dict], smooth: int = 9) -> Phases:
    """From metrics rows {epoch, train_acc, test_acc, test_loss}."""
    fit = next((r["epoch"] for r in metrics if r["train_acc"] >= 0.99), None)
    grok_i = next((i for i, r in enumerate(metrics) if r["test_acc"] >= 0.99), None)
    if fit is None or grok_i is None:
        return Phases(fit, None, None, None)
    loss = running_median([r["test_loss"] for r in metrics], smooth)
    epochs = [r["epoch"] for r in metrics]
    first = next(i for i, e in enumerate(epochs) if e >= fit)
    if grok_i <= first:
        return Phases(fit, None, None, epochs[grok_i])
    peak = max(range(first, grok_i), key=lambda i: loss[i])
    level = float(np.median(loss[peak:grok_i]))
    cleanup = max((i for i in range(peak, grok_i) if loss[i] >= level), default=peak)
    fall = loss[peak] - loss[grok_i]
    shares = ((loss[peak] - loss[cleanup]) / fall, (loss[cleanup] - loss[grok_i]) / fall) if fall > 0 else (None, None)
    return Phases(fit, epochs[peak], epochs[cleanup], epochs[grok_i], *shares)

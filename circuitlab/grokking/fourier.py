"""The Fourier algorithm of the grokking model (Nanda et al. 2023, 'Reverse engineering'; follows the authors'
progress-measures-paper code).

Fourier basis over Z/p, as an explicit orthonormal [p, p] matrix whose rows are functions of x in 0..p-1:
  row 0            1/sqrt(p)                          "const"
  row 2k-1, 2k     cos(w_k x), sin(w_k x), normalised  "cos k", "sin k"     w_k = 2 pi k / p,  k = 1..(p-1)/2
The model embeds a and b as cos/sin(w_k a), cos/sin(w_k b) for a few key frequencies k, its MLP computes
cos/sin(w_k (a + b)), and the readout gives logits(c) ~ sum_k alpha_k cos(w_k (a + b - c)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def fourier_basis(p: int) -> Tensor:
    """[p, p]: row i is the i-th basis function evaluated at x = 0..p-1; orthonormal (F F^T = I)."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, p // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    F = torch.stack(rows)
    return (F / F.norm(dim=1, keepdim=True)).float()


def fourier_names(p: int) -> list[str]:
    return ["const"] + [f"{t} {k}" for k in range(1, p // 2 + 1) for t in ("cos", "sin")]


def frequency_norms(component_norms: Tensor) -> Tensor:
    """Norms per frequency k = 1..(p-1)/2 from per-component norms [p] (cos and sin together): [(p-1)/2]."""
    c = component_norms[1:]
    return (c[0::2] ** 2 + c[1::2] ** 2).sqrt()


def embedding_fourier_norms(model, p: int) -> Tensor:
    """||(F W_E)_i|| over d_model for every Fourier component i of the token embedding: [p]."""
    return (fourier_basis(p).to(model.W_E) @ model.W_E[:p]).norm(dim=-1)


def neuron_logit_map(model) -> Tensor:
    """W_L = W_out W_U: [d_mlp, d_vocab], each neuron's direct effect on the logits."""
    return model.blocks[0].mlp.W_out @ model.W_U


def readout_fourier_norms(model, p: int) -> Tensor:
    """Norms over neurons of W_L's Fourier components along the output token c: [p]."""
    W_L = neuron_logit_map(model)[:, :p]
    return (W_L @ fourier_basis(p).to(W_L).T).norm(dim=0)


def all_inputs(p: int) -> Tensor:
    """[p*p, 3] 'a b =' for every pair, row a*p + b."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], 1)


@torch.no_grad()
def neuron_activations(model, p: int) -> Tensor:
    """ReLU neuron activations at the '=' position for every input: [p, p, d_mlp] (indexed a, b)."""
    tokens = all_inputs(p).to(model.W_E.device)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.mlp.hook_post")
    return cache["blocks.0.mlp.hook_post"][:, -1].reshape(p, p, -1)


def fourier_2d(x: Tensor, p: int) -> Tensor:
    """2-D Fourier transform over the (a, b) axes of [p, p, ...]: F x F^T on the first two axes."""
    F = fourier_basis(p).to(x)
    return torch.einsum("ia,jb,ab...->ij...", F, F, x)


def frequency_indices(k: int) -> list[int]:
    """Basis rows that carry frequency k, plus the constant: [const, cos k, sin k]."""
    return [0, 2 * k - 1, 2 * k]


@torch.no_grad()
def neuron_frequency_fractions(acts: Tensor, p: int) -> Tensor:
    """For each neuron and frequency k, the share of the neuron's variance over (a, b) (constant term excluded)
    carried by 2-D Fourier terms built from const/cos k/sin k alone: [d_mlp, (p-1)/2]. As in the authors' code."""
    f = fourier_2d(acts, p) ** 2  # [p, p, d_mlp]
    f[0, 0] = 0
    total = f.sum(dim=(0, 1)).clamp_min(1e-30)
    out = []
    for k in range(1, p // 2 + 1):
        i = frequency_indices(k)
        out.append(f[i][:, i].sum(dim=(0, 1)) / total)
    return torch.stack(out, dim=1)


def key_frequencies_from_neurons(fractions: Tensor, threshold: float = 0.85, min_neurons: int = 1) -> list[int]:
    """Frequencies that at least `min_neurons` neurons (at least one) are explained by above `threshold`, sorted."""
    best_frac, best_k = fractions.max(dim=1)
    ks = best_k[best_frac > threshold] + 1
    counts = torch.bincount(ks, minlength=fractions.shape[1] + 1)
    return [k for k in range(1, fractions.shape[1] + 1) if counts[k] >= max(min_neurons, 1)]


def sum_of_cosines_basis(p: int, k: int) -> Tensor:
    """cos(w_k (a + b - c)) as a [p*p, p] tensor (rows a*p + b, columns c)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    s = (a + b).flatten()[:, None] - torch.arange(p)[None, :]
    return torch.cos(2 * math.pi * k * s.double() / p).float()


def logit_fit(logits: Tensor, p: int, ks: list[int]) -> tuple[dict[int, float], float]:
    """Fit logits [p*p, p] by sum_k alpha_k cos(w_k (a + b - c)) after removing the mean over outputs of each input
    (softmax ignores it) and the mean over inputs of each output (a bias); the directions are orthogonal, so alpha_k
    is a projection. Returns ({k: alpha_k}, fraction of the remaining variance explained)."""
    y = logits[:, :p].detach().double()
    y = y - y.mean(1, keepdim=True) - y.mean(0, keepdim=True) + y.mean()
    fit, alphas = torch.zeros_like(y), {}
    for k in ks:
        d = sum_of_cosines_basis(p, k).double().to(y.device)
        alphas[k] = float((y * d).sum() / (d * d).sum())
        fit += alphas[k] * d
    return alphas, float(1 - ((y - fit) ** 2).sum() / (y ** 2).sum())

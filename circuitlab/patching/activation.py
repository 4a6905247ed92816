"""Activation patching (Meng et al. 2022; Wang et al. 2022, 'path patching' vs activation patching; as in
TransformerLens's `patching`): run the model on one set of prompts, replace one activation with its value on the
other set, and measure the metric.

direction="denoise" (default): run the corrupted prompts and patch in clean activations; normalized() = 1 where
a component alone restores the clean metric. direction="noise": run the clean prompts and patch in corrupted
activations; normalized() = 0 where a component alone destroys it.

Sites: the residual stream and layer outputs per (layer, position) (`LAYER_SITES`); per head (`HEAD_SITES`) its
output z, its query/key/value and its attention pattern, across all positions or per position (the query position
for q and the pattern, the key position for k and v, the position for z). Each layer is one batched forward pass
over all its heads (or positions): `common.run_patches`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitlab.errors import CircuitlabError
from circuitlab.patching.common import (
    HEAD_SITES, LAYER_SITES, Metric, PatchingResult, cache_sites, check_pair, dims, hook_name, mean_metric,
    require_site, run_patches,
)


def _pair(model, clean, corrupted, metric, direction):
    check_pair(clean, corrupted)
    if direction not in ("denoise", "noise"):
        raise CircuitlabError(f"direction must be 'denoise' or 'noise', not {direction!r}")
    target, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return target, source, mean_metric(model, clean, metric), mean_metric(model, corrupted, metric)


def head_masks(site: str, shape: tuple[int, ...], n_heads: int, per_position: bool) -> tuple[Tensor, list[str]]:
    """Masks over one example's activation at a head site: one per head, or per (position, head)."""
    if site == "pattern":  # [head, query, key]
        _, Q, K = shape
        if not per_position:
            m = torch.zeros(n_heads, *shape, dtype=torch.bool)
            m[torch.arange(n_heads), torch.arange(n_heads)] = True
            return m, ["head"]
        m = torch.zeros(Q, n_heads, *shape, dtype=torch.bool)
        for p in range(Q):
            for h in range(n_heads):
                m[p, h, h, p] = True
        return m.reshape(Q * n_heads, *shape), ["pos", "head"]
    P = shape[0]  # [pos, head, d_head]
    if not per_position:
        m = torch.zeros(n_heads, *shape, dtype=torch.bool)
        m[torch.arange(n_heads), :, torch.arange(n_heads)] = True
        return m, ["head"]
    m = torch.zeros(P, n_heads, *shape, dtype=torch.bool)
    for p in range(P):
        for h in range(n_heads):
            m[p, h, p, h] = True
    return m.reshape(P * n_heads, *shape), ["pos", "head"]


def patch_heads(model, clean: Tensor, corrupted: Tensor, metric: Metric, site: str = "z", per_position: bool = False,
                direction: str = "denoise") -> PatchingResult:
    """Patch each head's `site` activation (z, q, k, v or pattern): values over [layer, head] (or [layer, pos,
    head] per position); for k and v of a model with grouped key/value heads, over its key/value heads."""
    if site not in HEAD_SITES:
        raise CircuitlabError(f"head site must be one of {', '.join(HEAD_SITES)}, not {site!r}")
    target, source, clean_m, corrupt_m = _pair(model, clean, corrupted, metric, direction)
    L, H = dims(model)
    names = [hook_name(site, layer) for layer in range(L)]
    src = cache_sites(model, source, names)
    rows, axes = [], []
    # k and v of a model with grouped key/value heads have fewer heads than q and z: patched per key/value head
    H = src[names[0]].shape[1 if site == "pattern" else 2]
    for name in names:
        masks, axes = head_masks(site, tuple(src[name].shape[1:]), H, per_position)
        rows.append(run_patches(model, target, metric, {name: (src[name], masks)}))
    values = torch.stack(rows)
    shape = [L, *([values.shape[1] // H] if per_position else []), H]
    return PatchingResult(site, f"activation patching ({direction})", ["layer", *axes], shape,
                          values.reshape(-1).tolist(), clean_m, corrupt_m)


def patch_layers(model, clean: Tensor, corrupted: Tensor, metric: Metric, site: str = "resid_pre",
                 per_position: bool = True, direction: str = "denoise") -> PatchingResult:
    """Patch the residual stream or a layer's attention / MLP output (`LAYER_SITES`): values over [layer, pos] (or
    [layer] across all positions)."""
    if site not in LAYER_SITES:
        raise CircuitlabError(f"layer site must be one of {', '.join(LAYER_SITES)}, not {site!r}")
    require_site(model, site)
    target, source, clean_m, corrupt_m = _pair(model, clean, corrupted, metric, direction)
    L, _ = dims(model)
    names = [hook_name(site, layer) for layer in range(L)]
    src = cache_sites(model, source, names)
    rows = []
    for name in names:
        P, D = src[name].shape[1:]
        if per_position:
            masks = torch.zeros(P, P, D, dtype=torch.bool)
            masks[torch.arange(P), torch.arange(P)] = True
        else:
            masks = torch.ones(1, P, D, dtype=torch.bool)
        rows.append(run_patches(model, target, metric, {name: (src[name], masks)}))
    values = torch.stack(rows)
    return PatchingResult(site, f"activation patching ({direction})", ["layer", "pos"] if per_position else ["layer"],
                          list(values.shape) if per_position else [L], values.reshape(-1).tolist(), clean_m, corrupt_m)

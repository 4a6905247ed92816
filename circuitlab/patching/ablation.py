"""Ablations of attention heads (Wang et al. 2022 use mean ablation over the ABC distribution; Chan et al. 2022
argue for resampling): replace a head's output z by

- "zero": zeros;
- "mean": its mean over `reference` prompts at the same position (per template: the mean over the reference
  prompts of the same group, `groups` giving each prompt's and reference prompt's template);
- "resample": its value on a random reference prompt (`seed`; of the same template where `groups` are given).

`ablate_each_head` ablates the heads one at a time (one batched pass per layer); `ablate_heads` a set of heads at
once. Both return the mean metric over the prompts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitlab.errors import CircuitlabError
from circuitlab.heads import Head
from circuitlab.patching.activation import head_masks
from circuitlab.patching.common import (
    Metric, PatchingResult, cache_sites, dims, hook_name, mean_metric, run_patches,
)

KINDS = ("zero", "mean", "resample")


def replacement(model, tokens: Tensor, layer: int, kind: str, reference: Tensor | None = None,
                groups: Tensor | None = None, reference_groups: Tensor | None = None, seed: int = 0,
                z: Tensor | None = None) -> Tensor:
    """What a layer's z becomes under the ablation, for each prompt: [batch, pos, head, d_head]. z: the layer's z
    on the reference prompts where already cached."""
    if kind not in KINDS:
        raise CircuitlabError(f"ablation must be one of {', '.join(KINDS)}, not {kind!r}")
    name = hook_name("z", layer)
    reference = tokens if reference is None else reference
    if reference.shape[1] != tokens.shape[1]:
        raise CircuitlabError(f"reference prompts have {reference.shape[1]} positions and the prompts "
                              f"{tokens.shape[1]}: mean and resample ablation need the same positions")
    if kind == "zero":
        shape = z.shape[1:] if z is not None else (tokens.shape[1], int(model.cfg.n_heads), int(model.cfg.d_head))
        return torch.zeros(tokens.shape[0], *shape)
    z = cache_sites(model, reference, [name])[name] if z is None else z
    reference_groups = groups if reference_groups is None else reference_groups
    if kind == "resample":
        g = torch.Generator().manual_seed(seed)
        if groups is None:
            return z[torch.randint(0, len(z), (tokens.shape[0],), generator=g)]
        pick = torch.empty(tokens.shape[0], dtype=torch.long)
        for i, grp in enumerate(groups.tolist()):
            of = torch.nonzero(reference_groups == grp)[:, 0]
            if not len(of):
                raise CircuitlabError(f"template {grp} has no reference prompts to resample from")
            pick[i] = of[torch.randint(0, len(of), (1,), generator=g)]
        return z[pick]
    if groups is None:
        return z.mean(0, keepdim=True).expand(tokens.shape[0], *z.shape[1:])
    out = torch.empty(tokens.shape[0], *z.shape[1:], dtype=z.dtype)
    for g in groups.unique().tolist():
        of = reference_groups == g
        if not of.any():
            raise CircuitlabError(f"template {g} has no reference prompts to take its mean over")
        out[groups == g] = z[of].mean(0)
    return out


def ablate_each_head(model, tokens: Tensor, metric: Metric, kind: str = "mean", **kw) -> PatchingResult:
    """The metric with each head ablated alone: [layer, head]. clean = the metric unablated; corrupted = the metric
    with every head ablated at once."""
    L, H = dims(model)
    rows = []
    for layer in range(L):
        src = replacement(model, tokens, layer, kind, **kw)
        masks, _ = head_masks("z", tuple(src.shape[1:]), H, False)
        rows.append(run_patches(model, tokens, metric, {hook_name("z", layer): (src, masks)}))
    every = ablate_heads(model, tokens, metric, [Head(layer, h) for layer in range(L) for h in range(H)], kind, **kw)
    return PatchingResult("z", f"{kind} ablation", ["layer", "head"], [L, H], torch.stack(rows).reshape(-1).tolist(),
                          mean_metric(model, tokens, metric), every)


def ablate_heads(model, tokens: Tensor, metric: Metric, heads: list[Head], kind: str = "mean", **kw) -> float:
    """The mean metric with all `heads` ablated at once."""
    patches = {}
    for layer in sorted({h.layer for h in heads}):
        src = replacement(model, tokens, layer, kind, **kw)
        mask = torch.zeros(1, *src.shape[1:], dtype=torch.bool)
        for h in heads:
            if h.layer == layer:
                mask[0, :, h.head] = True
        patches[hook_name("z", layer)] = (src, mask)
    if not patches:
        return mean_metric(model, tokens, metric)
    return float(run_patches(model, tokens, metric, patches)[0])

"""Attribution patching (Nanda 2023, 'Attribution Patching'; Syed et al. 2023): the first-order estimate of every
activation patch at once from one forward and one backward pass,

    metric(patched) - metric(corrupted)  ~=  sum over the patched elements of (a_clean - a_corrupted) * d metric / d a

with the gradient taken on the corrupted run. It screens many components cheaply; `agreement` says how well it
ranks them against exact activation patching on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitlab.errors import CircuitlabError
from circuitlab.patching.activation import head_masks
from circuitlab.patching.common import (
    HEAD_SITES, LAYER_SITES, Metric, PatchingResult, cache_sites, check_pair, dims, hook_name, mean_metric,
    require_site,
)
from circuitlab.results import Result


def gradients(model, tokens: Tensor, metric: Metric, names: list[str]) -> tuple[dict, dict]:
    """Activations at `names` on `tokens` and the gradient of the mean metric with respect to them."""
    acts: dict[str, Tensor] = {}

    def keep(act, hook):
        act.retain_grad()
        acts[hook.name] = act
        return act

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names])
        metric(logits).mean().backward()
    model.zero_grad(set_to_none=True)
    return {n: a.detach() for n, a in acts.items()}, {n: acts[n].grad.detach() for n in names}


def attribution_patch(model, clean: Tensor, corrupted: Tensor, metric: Metric, site: str = "z",
                      per_position: bool = False) -> PatchingResult:
    """The estimated metric after patching each component (a head site over [layer, head] or [layer, pos, head], a
    layer site over [layer, pos]) from clean into corrupted: the corrupted metric plus the first-order change."""
    check_pair(clean, corrupted)
    L, H = dims(model)
    if site in LAYER_SITES:
        require_site(model, site)
    elif site not in HEAD_SITES:
        raise CircuitlabError(f"unknown site {site!r}: choose one of {', '.join(LAYER_SITES + HEAD_SITES)}")
    names = [hook_name(site, layer) for layer in range(L)]
    clean_acts = cache_sites(model, clean, names)
    corrupt_acts, grads = gradients(model, corrupted, metric, names)
    corrupt_m = mean_metric(model, corrupted, metric)
    rows, axes = [], []
    for n in names:
        delta = ((clean_acts[n] - corrupt_acts[n]) * grads[n]).sum(0)  # summed over prompts: the metric is a mean
        if site in HEAD_SITES:
            H = delta.shape[0 if site == "pattern" else 1]  # grouped key/value heads: k and v have fewer
            masks, axes = head_masks(site, tuple(delta.shape), H, per_position)
        else:
            P = delta.shape[0]
            masks = torch.eye(P, dtype=torch.bool)[:, :, None].expand(P, P, delta.shape[1]) if per_position else \
                torch.ones(1, *delta.shape, dtype=torch.bool)
            axes = ["pos"] if per_position else []
        rows.append((masks * delta[None]).flatten(1).sum(1))
    values = torch.stack(rows) + corrupt_m
    if site in HEAD_SITES:
        shape = [L, *([values.shape[1] // H] if per_position else []), H]
    else:
        shape = list(values.shape) if per_position else [L]
    return PatchingResult(site, "attribution patching", ["layer", *axes], shape, values.reshape(-1).tolist(),
                          mean_metric(model, clean, metric), corrupt_m)


@dataclass
class Agreement(Result):
    """How well an estimate ranks components against exact patching: Spearman's rank correlation of their effects
    (patched - corrupted), the Pearson correlation, and the overlap of the top k by |effect|."""

    spearman: float
    pearson: float
    top_k: int
    top_k_overlap: float


def _ranks(x: Tensor) -> Tensor:
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    return r


def agreement(estimate: PatchingResult, exact: PatchingResult, top_k: int = 10) -> Agreement:
    if estimate.shape != exact.shape:
        raise CircuitlabError(f"cannot compare patching results of shapes {estimate.shape} and {exact.shape}")
    a = estimate.tensor().flatten().double() - estimate.corrupted
    b = exact.tensor().flatten().double() - exact.corrupted
    corr = lambda x, y: float(torch.corrcoef(torch.stack([x, y]))[0, 1])  # noqa: E731
    k = min(top_k, len(a))
    top = lambda x: set(x.abs().argsort(descending=True)[:k].tolist())  # noqa: E731
    return Agreement(corr(_ranks(a), _ranks(b)), corr(a, b), k, len(top(a) & top(b)) / k)

"""Path patching (Wang et al. 2022, appendix B; Goldowsky-Dill et al. 2023): the effect of a sender head on the
metric through one path only -- directly into the receivers (heads' queries, keys or values, or the logits).

With x_orig the prompts the metric is measured on and x_new the ones the sender's output comes from:
1. cache every head's output z on x_orig and on x_new;
2. run x_orig with the sender's z taken from x_new and every other head's z frozen at its x_orig value (MLPs and
   LayerNorm recomputed), and keep the receivers' q / k / v (or, for the logits, the logits themselves);
3. run x_orig with only the receivers' q / k / v replaced by those, and measure the metric.
The sender's effect reaches the receivers only through the residual stream directly (and MLPs): no other head
passes it on. Every sender is one copy of a batched run (`common.run_patches`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitlab.errors import CircuitlabError
from circuitlab.heads import Head
from circuitlab.patching.common import (
    Metric, PatchingResult, cache_sites, check_pair, dims, hook_name, mean_metric, run_patches,
)

RECEIVER_SITES = ("q", "k", "v")


def path_patch(model, orig: Tensor, new: Tensor, metric: Metric, receivers: list[Head] | str = "logits",
               receiver_sites: tuple[str, ...] = RECEIVER_SITES, senders: list[Head] | None = None) -> PatchingResult:
    """The metric on `orig` after patching each sender head (default: every head) from `new` along its paths to
    `receivers` (heads, through `receiver_sites`; or "logits"): values over [layer, head] (heads not in `senders`,
    and senders not before every receiver, keep the unpatched metric). clean = metric(orig), corrupted =
    metric(new)."""
    check_pair(orig, new)
    L, H = dims(model)
    if receivers != "logits":
        receivers = [Head(*r) for r in receivers]
        if not receivers or any(not (0 <= r.layer < L and 0 <= r.head < H) for r in receivers):
            raise CircuitlabError(f"receivers must be heads of this {L}-layer, {H}-head model (or 'logits')")
        if any(s not in RECEIVER_SITES for s in receiver_sites):
            raise CircuitlabError(f"receiver sites must be among {', '.join(RECEIVER_SITES)}")
    all_heads = [Head(layer, h) for layer in range(L) for h in range(H)]
    senders = all_heads if senders is None else [Head(*s) for s in senders]
    last = L if receivers == "logits" else max(r.layer for r in receivers)
    active = [s for s in senders if s.layer < last or (receivers == "logits" and s.layer < L)]
    clean_m = mean_metric(model, orig, metric)
    values = torch.full((L, H), clean_m)
    if active:
        values[tuple(torch.tensor(active).T)] = _path_values(model, orig, new, metric, receivers, receiver_sites,
                                                             active)
    return PatchingResult("z", f"path patching to {'logits' if receivers == 'logits' else ', '.join(map(str, receivers))}"
                          + ("" if receivers == "logits" else f" ({'/'.join(receiver_sites)})"),
                          ["layer", "head"], [L, H], values.reshape(-1).tolist(), clean_m, mean_metric(model, new, metric))


def _path_values(model, orig, new, metric, receivers, receiver_sites, senders: list[Head]) -> Tensor:
    L, H = dims(model)
    B = orig.shape[0]
    zs = [hook_name("z", layer) for layer in range(L)]
    z_orig, z_new = cache_sites(model, orig, zs), cache_sites(model, new, zs)
    k = len(senders)
    # step 2: every head's z frozen at x_orig, the sender's (copy i: sender i) from x_new
    freeze = {}
    for layer in range(L):
        mask = torch.zeros(k, *z_orig[zs[layer]].shape[1:], dtype=torch.bool)
        for i, s in enumerate(senders):
            if s.layer == layer:
                mask[i, :, s.head] = True
        both = torch.where(mask[:, None], z_new[zs[layer]][None], z_orig[zs[layer]][None])  # [k, B, ...]
        freeze[zs[layer]] = (both.reshape(k * B, *both.shape[2:]), torch.ones(k, *mask.shape[1:], dtype=torch.bool))
    if receivers == "logits":
        return run_patches(model, orig, metric, freeze)
    names = sorted({hook_name(s, r.layer) for r in receivers for s in receiver_sites})
    kept: dict[str, list[Tensor]] = {n: [] for n in names}

    def keep(act, hook):
        kept[hook.name].append(act.detach().clone())
        return act

    run_patches(model, orig, lambda logits: torch.zeros(logits.shape[0]), freeze,
                extra_hooks=lambda rows: [(n, keep) for n in names])
    # step 3: only the receivers' q / k / v from step 2, everything else free
    patches = {}
    for n in names:
        got = torch.cat(kept[n])  # [k * B, pos, head, d_head]
        mask = torch.zeros(k, *got.shape[1:], dtype=torch.bool)
        layer = int(n.split(".")[1])
        groups = H // got.shape[2]  # grouped key/value heads: a receiver's k and v are its group's
        for r in receivers:
            if r.layer == layer:
                mask[:, :, r.head // groups] = True
        patches[n] = (got, mask)
    return run_patches(model, orig, metric, patches)

"""Path patching (Wang et al. 2022, appendix B; Goldowsky-Dill et al. 2023): the effect of a sender head on the
metric through one path only -- directly into the receivers (heads' queries, keys or values, or the logits).

With x_orig the prompts the metric is measured on and x_new the ones the sender's output comes from:
1. cache every head's output z on x_orig and on x_new;
2. run x_orig with the sender's z taken from x_new and every other head's z frozen at its x_orig value (MLPs and
   LayerNorm recomputed), and keep the receivers' q / k / v (or, for the logits, the logits themselves);
3. run x_orig with only the receivers' q / k / v replaced by those, and measure the metric.
The sender's effect reaches the receivers only through the residual stream directly (and MLPs): no other head
passes it on. Every sender is one copy of a batched run (`common.run_patches`). `receiver_positions` ([batch], one
per prompt) restricts step 3 to the receivers' q / k / v at that position (the paper's name movers' queries at END,
S-inhibition heads' values at S2, induction heads' keys at S1+1).

`path_attribution` is the first-order estimate of every sender's path effect at once (attribution patching along
the path), from two forward and backward passes: it screens all heads, and `path_patch(senders=...)` confirms the
top ones exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitlab.errors import CircuitlabError
from circuitlab.heads import Head
from circuitlab.patching.attribution import gradients
from circuitlab.patching.common import (
    Metric, PatchingResult, Stop, cache_sites, check_pair, dims, hook_name, mean_metric, run_patches,
)

RECEIVER_SITES = ("q", "k", "v")


def _check_receivers(model, receivers, receiver_sites):
    L, H = dims(model)
    if receivers == "logits":
        return receivers
    receivers = [Head(*r) for r in receivers]
    if not receivers or any(not (0 <= r.layer < L and 0 <= r.head < H) for r in receivers):
        raise CircuitlabError(f"receivers must be heads of this {L}-layer, {H}-head model (or 'logits')")
    if any(s not in RECEIVER_SITES for s in receiver_sites):
        raise CircuitlabError(f"receiver sites must be among {', '.join(RECEIVER_SITES)}")
    return receivers


def _method(kind: str, receivers, receiver_sites) -> str:
    return f"{kind} to {'logits' if receivers == 'logits' else ', '.join(map(str, receivers))}" + \
        ("" if receivers == "logits" else f" ({'/'.join(receiver_sites)})")


def path_patch(model, orig: Tensor, new: Tensor, metric: Metric, receivers: list[Head] | str = "logits",
               receiver_sites: tuple[str, ...] = RECEIVER_SITES, senders: list[Head] | None = None,
               receiver_positions: Tensor | None = None) -> PatchingResult:
    """The metric on `orig` after patching each sender head (default: every head) from `new` along its paths to
    `receivers` (heads, through `receiver_sites`; or "logits"): values over [layer, head] (heads not in `senders`,
    and senders not before every receiver, keep the unpatched metric). clean = metric(orig), corrupted =
    metric(new)."""
    check_pair(orig, new)
    L, H = dims(model)
    receivers = _check_receivers(model, receivers, receiver_sites)
    all_heads = [Head(layer, h) for layer in range(L) for h in range(H)]
    senders = all_heads if senders is None else [Head(*s) for s in senders]
    last = L if receivers == "logits" else max(r.layer for r in receivers)
    active = [s for s in senders if s.layer < last or (receivers == "logits" and s.layer < L)]
    clean_m = mean_metric(model, orig, metric)
    values = torch.full((L, H), clean_m)
    if active:
        values[tuple(torch.tensor(active).T)] = _path_values(model, orig, new, metric, receivers, receiver_sites,
                                                             active, receiver_positions)
    return PatchingResult("z", _method("path patching", receivers, receiver_sites), ["layer", "head"], [L, H],
                          values.reshape(-1).tolist(), clean_m, mean_metric(model, new, metric))


def _receiver_mask(shape: tuple[int, ...], H: int, receivers: list[Head], layer: int,
                   positions: Tensor | None) -> Tensor:
    """Where receivers of `layer` are patched in one example's q / k / v ([pos, head, d_head]; grouped key/value
    heads: a receiver's k and v are its group's), or per prompt ([batch, pos, head, d_head]) at `positions`."""
    groups = H // shape[1]
    heads = [r.head // groups for r in receivers if r.layer == layer]
    if positions is None:
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[:, heads] = True
        return mask
    mask = torch.zeros(len(positions), *shape, dtype=torch.bool)
    for h in heads:
        mask[torch.arange(len(positions)), positions, h] = True
    return mask


def _path_values(model, orig, new, metric, receivers, receiver_sites, senders: list[Head],
                 receiver_positions: Tensor | None = None) -> Tensor:
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
    seen: set[str] = set()

    def keep(act, hook):
        kept[hook.name].append(act.detach().clone())
        seen.add(hook.name)
        if seen == set(names):  # every receiver read: the layers after them do not matter here
            seen.clear()
            raise Stop
        return act

    run_patches(model, orig, lambda logits: torch.zeros(logits.shape[0]), freeze,
                extra_hooks=lambda rows: (seen.clear(), [(n, keep) for n in names])[1])
    # step 3: only the receivers' q / k / v from step 2, everything else free
    patches = {}
    for n in names:
        got = torch.cat(kept[n])  # [k * B, pos, head, d_head]
        one = _receiver_mask(tuple(got.shape[1:]), H, receivers, int(n.split(".")[1]), receiver_positions)
        patches[n] = (got, one[None].expand(k, *one.shape))
    return run_patches(model, orig, metric, patches)


def path_attribution(model, orig: Tensor, new: Tensor, metric: Metric, receivers: list[Head] | str = "logits",
                     receiver_sites: tuple[str, ...] = RECEIVER_SITES,
                     receiver_positions: Tensor | None = None) -> PatchingResult:
    """The first-order estimate of `path_patch` for every sender head at once:

        path_patch(s) - metric(orig)  ~=  sum over prompts and positions of (z_new - z_orig)_s . g_s

    with g_s the gradient of the mean metric with respect to head s's output z along the path: every head's z a
    leaf frozen at its x_orig value (so no other head passes the sender's effect on), through the residual stream and
    the MLPs to the receivers' q / k / v (at `receiver_positions`), then from there freely to the metric:
    g_s = d[sum(G * a_R)] / d z_s, where a_R are the receivers' activations in the frozen run and G = d metric /
    d a_R in a free run on x_orig. For the logits, g_s is the gradient of the metric in the frozen run."""
    check_pair(orig, new)
    L, H = dims(model)
    receivers = _check_receivers(model, receivers, receiver_sites)
    zs = [hook_name("z", layer) for layer in range(L)]
    z_orig, z_new = cache_sites(model, orig, zs), cache_sites(model, new, zs)
    clean_m = mean_metric(model, orig, metric)
    names = [] if receivers == "logits" else sorted({hook_name(s, r.layer) for r in receivers for s in receiver_sites})
    G = {}
    if names:  # d metric / d a_R, free run
        _, grads = gradients(model, orig, metric, names)
        for n in names:
            g = grads[n]
            mask = _receiver_mask(tuple(g.shape[1:]), H, receivers, int(n.split(".")[1]), receiver_positions)
            G[n] = g * mask.to(g.dtype)  # broadcasts over the batch when the mask is per example
    leaves = {n: z_orig[n].clone().requires_grad_(True) for n in zs}
    captured: dict[str, Tensor] = {}

    def frozen(act, hook):
        return leaves[hook.name]

    def capture(act, hook):
        captured[hook.name] = act
        return act

    with torch.enable_grad():
        logits = model.run_with_hooks(orig, fwd_hooks=[(n, frozen) for n in zs] + [(n, capture) for n in names])
        target = metric(logits).mean() if not names else sum((G[n] * captured[n]).sum() for n in names)
        target.backward()
    model.zero_grad(set_to_none=True)
    last = L if receivers == "logits" else max(r.layer for r in receivers)
    values = torch.full((L, H), clean_m)
    for layer in range(min(last, L)):
        g = leaves[zs[layer]].grad
        if g is None:
            continue
        delta = ((z_new[zs[layer]] - z_orig[zs[layer]]) * g).sum((0, 1, 3))  # [head]
        values[layer] = clean_m + delta
    return PatchingResult("z", _method("path attribution", receivers, receiver_sites), ["layer", "head"], [L, H],
                          values.reshape(-1).tolist(), clean_m, mean_metric(model, new, metric))

"""Head ablations against the ICL score (Olsson et al. 2022, 'Argument 3'; ablations).

- Pattern-preserving ablation: record every head's attention pattern on the clean input, rerun with those patterns
  frozen and the ablated heads' outputs removed, so later heads still attend where they did and only the
  ablated heads' written information is lost. Exact for attention-only models without LayerNorm (see
  circuits/paths.py).
- Full ablation: zero the heads' outputs (hook_z) and let every later pattern change.
Reported as the change of the ICL score: ablating a head that carries in-context learning makes the score less
negative (positive change).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab.circuits.heads import attention_patterns
from circuitlab.circuits.paths import check_linear_attention_only, embeddings, head_values, unembed
from circuitlab.heads import Head
from circuitlab.induction.icl import icl_positions, loss_of_token
from circuitlab.results import Result


def _per_token(logits: Tensor, tokens: Tensor) -> Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none").view(
        tokens.shape[0], -1)


@torch.no_grad()
def clean_patterns(model, tokens: Tensor, batch_size: int = 32) -> list[Tensor]:
    """The attention patterns of the clean input, per batch of `batch_size`, for pattern-preserving ablations."""
    return [attention_patterns(model, b.to(model.W_E.device)) for b in tokens.split(batch_size)]


@torch.no_grad()
def ablated_per_token_loss(model, tokens: Tensor, heads: list[tuple[int, int]], preserve_patterns: bool = True,
                           batch_size: int = 32, patterns: list[Tensor] | None = None) -> Tensor:
    """[batch, pos - 1] losses with `heads` ablated (pattern-preserving or full). `patterns`: the clean patterns
    from `clean_patterns` (same batch_size), recorded here if not given."""
    if preserve_patterns:
        check_linear_attention_only(model, "pattern-preserving ablation")
        patterns = clean_patterns(model, tokens, batch_size) if patterns is None else patterns
    out = []
    for i, batch in enumerate(tokens.split(batch_size)):
        batch = batch.to(model.W_E.device)
        if preserve_patterns:
            resid, _ = embeddings(model, batch)
            for l in range(model.cfg.n_layers):
                r = head_values(model, l, resid, patterns[i][l])
                for hl, hh in heads:
                    if hl == l:
                        r[:, :, hh] = 0
                resid = resid + r.sum(2)
            out.append(_per_token(unembed(model, resid), batch).cpu())
        else:
            def zero(z, hook):
                layer = int(hook.name.split(".")[1])
                for hl, hh in heads:
                    if hl == layer:
                        z[:, :, hh] = 0
                return z

            hooks = [(f"blocks.{l}.attn.hook_z", zero) for l in sorted({l for l, _ in heads})]
            logits = model.run_with_hooks(batch, fwd_hooks=hooks)
            out.append(_per_token(logits, batch).cpu())
    return torch.cat(out)


@dataclass
class AblationResult(Result):
    """clean_icl: the ICL score without ablation; per_head[l][h]: change of the ICL score when head l.h alone is
    ablated (positive = that head carried ICL); group: the change when all heads in `group_heads` are ablated
    together; group_share: that change as a share of -clean_icl (how much of the ICL the group carries)."""

    preserve_patterns: bool
    clean_icl: float
    per_head: list[list[float]]
    group_heads: list[Head]
    group: float | None
    group_share: float | None
    heads_raising_icl: int


def _icl(losses: Tensor, n_ctx: int) -> float:
    early, late = icl_positions(n_ctx)
    return float(loss_of_token(losses, late).mean() - loss_of_token(losses, early).mean())


def ablate_heads(model, windows: Tensor, group: list[tuple[int, int]] = (), preserve_patterns: bool = True) -> AblationResult:
    n_ctx = windows.shape[1]
    patterns = clean_patterns(model, windows) if preserve_patterns else None  # recorded once for every ablation

    def icl_without(heads: list[tuple[int, int]]) -> float:
        return _icl(ablated_per_token_loss(model, windows, heads, preserve_patterns, patterns=patterns), n_ctx)

    clean = icl_without([])
    per_head = [[icl_without([(l, h)]) - clean for h in range(model.cfg.n_heads)] for l in range(model.cfg.n_layers)]
    g = g_share = None
    if group:
        g = icl_without(list(group)) - clean
        g_share = g / -clean if clean < 0 else None
    in_group = set(map(tuple, group))
    raising = sum(per_head[l][h] < 0 for l in range(len(per_head)) for h in range(len(per_head[l]))
                  if (l, h) not in in_group)
    return AblationResult(preserve_patterns=preserve_patterns, clean_icl=clean, per_head=per_head,
                          group_heads=[Head(l, h) for l, h in group], group=g, group_share=g_share,
                          heads_raising_icl=int(raising))

"""Attention heads and their roles: the one place that says what a previous-token, induction or copying head is.

A head is written `L.H` (layer L, head H), as in TransformerLens and the papers. `Head` is a named tuple, so it
indexes a per-head score tensor directly: `scores[head]` is `scores[layer, head]`.

Role thresholds are ours (the papers name roles without fixed cut-offs); each is stated with its reason so that it
can be argued with, and every analysis, claim and table reads them from here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# A previous-token head puts more than 40% of its attention on the previous token of text (Olsson et al. 2022,
# 'previous token heads'; uniform attention over a 128-token window gives < 1%).
PREVIOUS_TOKEN = 0.4
# An induction head puts at least 10% of its attention on the token after the earlier copy in repeated random
# tokens -- several times what uniform attention gives that target (1/76 on average over a repeat of 2 x 50
# tokens) -- and at least half as much as the model's best head, so that one strong head does not drag weak
# look-alikes into the group.
INDUCTION = 0.1
INDUCTION_RELATIVE = 0.5
# A copying head's OV circuit has an eigenvalue statistic sum(lambda) / sum(|lambda|) above 0.5: mostly positive
# eigenvalues, i.e. it raises the logits of the tokens it attends to (Elhage et al. 2021, 'Copying / Primarily
# Positive Eigenvalues').
COPYING = 0.5


class Head(NamedTuple):
    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"

    @classmethod
    def parse(cls, s: str) -> "Head":
        """'1.3' -> Head(1, 3)."""
        layer, _, head = str(s).partition(".")
        return cls(int(layer), int(head))

    @classmethod
    def of_index(cls, flat: int, n_heads: int) -> "Head":
        """The head at position `flat` of a flattened [n_layers, n_heads] tensor."""
        return cls(flat // n_heads, flat % n_heads)


def all_heads(n_layers: int, n_heads: int) -> list[Head]:
    return [Head(l, h) for l in range(n_layers) for h in range(n_heads)]


def best_head(scores: torch.Tensor, min_layer: int = 0) -> Head:
    """The head with the highest score, among layers >= min_layer."""
    s = torch.as_tensor(scores, dtype=torch.float64).clone()
    s[:min_layer] = -torch.inf
    return Head.of_index(int(torch.nan_to_num(s, nan=-torch.inf).argmax()), s.shape[1])


def is_previous_token_head(previous_token_score: float) -> bool:
    return previous_token_score > PREVIOUS_TOKEN


def is_copying_head(ov_copying: float) -> bool:
    return ov_copying > COPYING


def induction_heads(induction: torch.Tensor) -> list[Head]:
    """Heads of layers >= 1 whose induction score is >= INDUCTION and >= INDUCTION_RELATIVE x the best head's.
    (A layer-0 head cannot be an induction head in an attention-only model without smeared keys; with smeared keys
    it can, so layer 0 counts too when its score passes.)"""
    s = torch.nan_to_num(torch.as_tensor(induction, dtype=torch.float64), nan=0.0)
    best = float(s.max()) if s.numel() else 0.0
    hits = (s >= INDUCTION) & (s >= INDUCTION_RELATIVE * best)
    return [Head(int(l), int(h)) for l, h in zip(*torch.nonzero(hits, as_tuple=True))]


def head_roles(head: Head, previous_token: float, ov_copying: float, induction_group: list[Head]) -> list[str]:
    """The roles of one head, in a fixed order."""
    return [name for name, hit in (("previous-token", is_previous_token_head(previous_token)),
                                   ("induction", head in induction_group),
                                   ("copying", is_copying_head(ov_copying))) if hit]

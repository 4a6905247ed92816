"""What drives each head's attention: its scores split into additive terms (Elhage et al. 2021, 'QK circuit',
'K-composition'; exact for attention-only models without LayerNorm, see `paths.py`).

- Positional vs content: with q_i = (c_i + p_i) W_Q and k_j = (c_j + p_j) W_K (c = everything in the residual
  stream that is not the positional embedding p), a score is pos.pos + content.content + mixed terms. Softmax only
  sees differences between the keys of one query, so each term's weight is its variance over the keys j <= i,
  averaged over queries; the positional share is var(pos.pos) / (sum of the three variances).
- Induction mechanism: for an induction head on repeated random tokens, the key of the target token (the one after
  the earlier copy) splits into token embedding, position and every earlier head's output. Each part's share of the
  score margin (target score minus the mean score of the other keys) says what the head matches on; an induction
  head formed by K-composition gets most of its margin from one earlier previous-token head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitlab.circuits.heads import repeated_random_tokens
from circuitlab.circuits.paths import head_results, is_shortformer, score_terms
from circuitlab.heads import Head
from circuitlab.results import Result

POSITIONAL = 0.5  # a head whose positional share of score variance exceeds this is called positional


@dataclass
class ScoreSplit(Result):
    """Per head [n_layers, n_heads]: shares of the scores' variance over keys from the positional, content and
    mixed terms (they sum to 1), and a role: 'previous-token' (given previous-token scores above the threshold),
    else 'positional' (positional share > 0.5), else 'content'."""

    positional: Tensor
    content: Tensor
    mixed: Tensor
    roles: list[list[str]]


def _key_variance(scores: Tensor) -> Tensor:
    """Variance over causal keys (j <= i) of [batch, head, q, k] scores, averaged over batch and queries i >= 1."""
    T = scores.shape[-1]
    mask = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
    n = mask.sum(-1)  # keys per query
    mean = (scores * mask).sum(-1, keepdim=True) / n[:, None]
    var = (((scores - mean) * mask) ** 2).sum(-1) / n  # [batch, head, q]
    return var[..., 1:].mean(dim=(0, 2))


@torch.no_grad()
def positional_content_split(model, tokens: Tensor, previous_token: Tensor | None = None,
                             previous_token_threshold: float = 0.4) -> ScoreSplit:
    """Split every head's attention scores on `tokens` (text) into positional, content and mixed parts."""
    x0, pos, results = head_results(model, tokens)
    content = x0 - (0 if is_shortformer(model) else pos)  # the residual stream without its positional part
    L = model.cfg.n_layers
    shares = []
    for l in range(L):
        parts = {"c": content, "p": pos.expand_as(content)}
        t = {(a, b): s for a in "cp" for b, s in score_terms(model, l, parts[a], parts).items()}
        v_pos, v_con = _key_variance(t["p", "p"]), _key_variance(t["c", "c"])
        v_mix = _key_variance(t["c", "p"] + t["p", "c"])
        total = (v_pos + v_con + v_mix).clamp_min(1e-30)
        shares.append(torch.stack([v_pos / total, v_con / total, v_mix / total]))
        content = content + results[l].sum(2)
    s = torch.stack(shares)  # [L, 3, H]
    roles = [[("previous-token" if previous_token is not None and previous_token[l, h] > previous_token_threshold
               else "positional" if s[l, 0, h] > POSITIONAL else "content") for h in range(model.cfg.n_heads)]
             for l in range(L)]
    return ScoreSplit(positional=s[:, 0], content=s[:, 1], mixed=s[:, 2], roles=roles)


@dataclass
class InductionMechanism(Result):
    """For induction head `head`, on repeated random tokens: the share of its score margin on the target key that
    each part of the key explains (they sum to 1): token embedding, position, and each earlier head L.H.
    k_composes_with: the earlier head with the largest share; k_composition_share: that share."""

    head: Head
    margin: float
    shares: dict[str, float]
    k_composes_with: Head
    k_composition_share: float
    all_earlier_heads_share: float


@torch.no_grad()
def induction_mechanism(model, layer: int, head: int, n_tokens: int = 50, batch: int = 10, bos: int | None = 0,
                        seed: int = 0, allowed: Tensor | None = None) -> InductionMechanism:
    """Decompose induction head layer.head's score to the token after the earlier copy (BOS + N random + the same N)."""
    if layer < 1:
        raise ValueError("an induction head needs an earlier layer to compose with (layer >= 1)")
    n_tokens = min(n_tokens, (model.cfg.n_ctx - (bos is not None)) // 2)
    tokens = repeated_random_tokens(n_tokens, 2, batch, model.cfg.d_vocab, bos, seed, allowed)
    x0, pos, results = head_results(model, tokens)
    x_tok = model.W_E[tokens]
    resid = x0 + results[:layer].sum(dim=(0, 3))
    query_in = resid + (pos if is_shortformer(model) else 0)
    parts = {"embedding": x_tok, "position": pos.expand_as(x_tok)}
    for l in range(layer):
        for h in range(model.cfg.n_heads):
            parts[str(Head(l, h))] = results[l, :, :, h]
    terms = score_terms(model, layer, query_in, parts)
    off = 1 if bos is not None else 0
    dest = torch.arange(off + n_tokens, off + 2 * n_tokens)
    target = dest - n_tokens + 1
    keys = torch.arange(tokens.shape[1])
    causal = keys[None, :] <= dest[:, None]  # [n_dest, T]
    others = causal & (keys[None, :] != target[:, None])
    margins = {}
    for name, s in terms.items():
        s = s[:, head][:, dest]  # [batch, n_dest, T]
        at_target = s.gather(-1, target[None, :, None].expand(s.shape[0], -1, 1)).squeeze(-1)
        mean_other = (s * others).sum(-1) / others.sum(-1)
        margins[name] = float((at_target - mean_other).mean())
    total = sum(margins.values())
    shares = {k: v / total for k, v in margins.items()}
    head_shares = {k: v for k, v in shares.items() if k not in ("embedding", "position")}
    best = max(head_shares, key=head_shares.get)
    return InductionMechanism(head=Head(layer, head), margin=total, shares=shares, k_composes_with=Head.parse(best),
                              k_composition_share=head_shares[best],
                              all_earlier_heads_share=sum(head_shares.values()))

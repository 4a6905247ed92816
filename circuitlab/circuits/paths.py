"""Path expansion with frozen attention patterns (Elhage et al. 2021, 'Path expansion' and 'Term importance').

An attention-only model without LayerNorm is, once its attention patterns A^{l,h} are fixed, linear in its
embedding x0 = W_E[t] (+ W_pos for standard positions). Every residual stream then splits into paths through
0, 1, 2, ... heads:
  order 0   x0                                              the direct path, logits x0 W_U
  order 1   A^h x0 W_OV^h                                   each head reading the embeddings
  order 2   A^{h2} A^{h1} x0 W_OV^{h1} W_OV^{h2}            virtual heads (V-composition), h1 in an earlier layer
and the sum over all orders is exactly the model's residual stream. The same linearity splits each head's
attention scores into token, positional and per-earlier-head terms (used for the K-composition share of an
induction head and for the positional/content split).

Works on any attention-only model without LayerNorm exposing TransformerLens's weights and `hook_pattern`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from circuitlab.circuits.heads import attention_patterns


def is_linear_attention_only(cfg) -> bool:
    """The paper's setting, where the path expansion is exact: attention only, no LayerNorm in the blocks, no
    attention biases. A circuitlab model's `final_norm` (LayerNormPre before W_U only) keeps the blocks linear: the
    terms are summed first and the sum is normalised, as the model itself does (`unembed`)."""
    norm_free = getattr(cfg, "normalization_type", None) is None or (
        getattr(cfg, "final_norm", False) and not getattr(cfg, "layer_norm", False))
    return getattr(cfg, "attn_only", False) and norm_free and not getattr(cfg, "attn_bias", False)


def unembed(model, resid: Tensor) -> Tensor:
    """The logits of a final residual stream (or of a sum of its terms): the final LayerNorm (if any), then W_U."""
    ln = getattr(model, "ln_final", None)
    return (ln(resid) if ln is not None else resid) @ model.W_U


def check_linear_attention_only(model, what: str) -> None:
    """Path expansion needs an attention-only model with no LayerNorm (the paper's setting)."""
    if not is_linear_attention_only(model.cfg):
        raise ValueError(f"{what} needs an attention-only model without LayerNorm or attention biases "
                         "(Elhage et al. 2021's setting)")


def is_shortformer(model) -> bool:
    """Shortformer positions enter only Q and K; standard positions are written into the residual stream."""
    return getattr(model.cfg, "positional_embedding_type", "standard") == "shortformer"


def embeddings(model, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(x0, pos): x0 [batch, pos, d_model] is the residual stream's input; pos [pos, d_model] is W_pos[:T]
    (added to x0 for standard positions, to the input of W_Q and W_K only for shortformer)."""
    x_tok = model.W_E[tokens]
    pos = model.W_pos[: tokens.shape[-1]]
    return (x_tok if is_shortformer(model) else x_tok + pos), pos


def smear(model, layer: int, k: Tensor) -> Tensor:
    """Apply the layer's smeared keys (Olsson et al. 2022) to k [batch, pos, head, d_head]; identity if none.
    Smearing is linear, so it can be applied to each additive part of a key separately."""
    blocks = getattr(model, "blocks", None)
    attn = blocks[layer].attn if blocks is not None else None
    if attn is None or getattr(attn, "smear_alpha", None) is None:
        return k
    return attn.smear(k)


def head_values(model, layer: int, resid: Tensor, pattern: Tensor) -> Tensor:
    """Each head's output written to the residual stream with frozen pattern: A^h (resid W_V^h) W_O^h.
    resid [batch, pos, d_model], pattern [batch, head, q, k] -> [batch, pos, head, d_model]."""
    v = torch.einsum("bpd,hde->bphe", resid, model.W_V[layer])
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
    return torch.einsum("bqhe,hed->bqhd", z, model.W_O[layer])


@torch.no_grad()
def head_results(model, tokens: Tensor, patterns: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Frozen-pattern forward pass. Returns (x0, pos, results) with results [n_layers, batch, pos, head, d_model]:
    every head's output (exact, given the patterns, which are recorded from the model if not given)."""
    check_linear_attention_only(model, "head_results")
    patterns = attention_patterns(model, tokens) if patterns is None else patterns
    x0, pos = embeddings(model, tokens)
    resid, results = x0, []
    for l in range(model.cfg.n_layers):
        r = head_values(model, l, resid, patterns[l])
        results.append(r)
        resid = resid + r.sum(2)
    return x0, pos, torch.stack(results) if results else x0.new_zeros((0, *x0.shape[:2], 0, x0.shape[-1]))


def order_expansion(model, tokens: Tensor, patterns: Tensor) -> Tensor:
    """The final residual stream split by path order: [n_layers + 1, batch, pos, d_model], entry k = the sum of all
    paths through exactly k heads (k = 0 is the direct path). Their sum is the model's final residual stream."""
    x0, _ = embeddings(model, tokens)
    L = model.cfg.n_layers
    R = [x0] + [torch.zeros_like(x0) for _ in range(L)]
    for l in range(L):
        outs = [head_values(model, l, R[k], patterns[l]).sum(2) for k in range(l + 1)]  # order k -> order k + 1
        for k, o in enumerate(outs):
            R[k + 1] = R[k + 1] + o
    return torch.stack(R)


def score_terms(model, layer: int, query_in: Tensor, key_parts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Attention scores of every head of `layer` split over additive parts of the key input:
    q_i . (part_j W_K (smeared)) / sqrt(d_head) for each part: {name: [batch, head, q, k]}. Their sum is the score."""
    q = torch.einsum("bpd,hde->bphe", query_in, model.W_Q[layer])
    out = {}
    for name, part in key_parts.items():
        part = part if part.dim() == 3 else part.expand(query_in.shape[0], -1, -1)
        k = smear(model, layer, torch.einsum("bpd,hde->bphe", part, model.W_K[layer]))
        out[name] = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(model.cfg.d_head)
    return out

"""The logits of the last position only, for one-layer models whose loss reads nothing else (the grokking model of
Nanda et al. 2023: "a b =" -> answer). Used by its training step and by analyses over all p^2 inputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab.model.model import Transformer


def last_position_logits(model: Transformer, tokens: Tensor) -> Tensor:
    """model(tokens)[:, -1] for a one-layer model without LayerNorm, computing only what the last position needs:
    [batch, d_vocab]. Keys and values of position i are rows of the table (W_E + W_pos[i]) W_K (W_V) gathered by
    token, so their cost scales with the vocabulary, not the batch."""
    cfg = model.cfg
    if cfg.n_layers != 1 or cfg.layer_norm or cfg.attn_bias or cfg.positional_embedding_type != "standard":
        raise ValueError("last_position_logits covers the grokking model: 1 layer, standard positions, no LN/biases")
    a = model.blocks[0].attn
    B, T = tokens.shape
    H, E = cfg.n_heads, cfg.d_head
    resid_in = model.W_E[None] + model.W_pos[:T, None]  # [T, V, D]: every (position, token) input
    pos = torch.arange(T, device=tokens.device)
    # Gather q, k, v from per-(position, token) tables. Separate tables, not slices of one gathered tensor: the
    # backward of a slice allocates and zero-fills the whole [batch, ...] tensor, which dominated the step.
    V = cfg.d_vocab
    rows = tokens + V * pos  # each (position, token)'s row of the flattened [T * V] tables
    # F.embedding, not indexing: its backward accumulates rows in one fast pass, where indexing's backward
    # (index_put_ with accumulate) took a third of the step (benchmarks/grokking_step.py)
    q = F.embedding(tokens[:, -1], torch.einsum("vd,hde->vhe", resid_in[T - 1], a.W_Q).reshape(V, H * E))
    k = F.embedding(rows, torch.einsum("tvd,hde->tvhe", resid_in, a.W_K).reshape(T * V, H * E))
    v = F.embedding(rows, torch.einsum("tvd,hde->tvhe", resid_in, a.W_V).reshape(T * V, H * E))
    q, k, v = q.view(B, H, E), k.view(B, T, H, E), v.view(B, T, H, E)
    # tiny per-example products: elementwise beats batched matmuls of 1 x E by E x T
    pattern = ((q[:, None] * k).sum(-1) / math.sqrt(E)).softmax(1)  # [B, T, H]: the last query sees all T
    z = (pattern[..., None] * v).sum(1)  # [B, H, E]
    resid = F.embedding(tokens[:, -1], resid_in[T - 1]) + z.reshape(B, H * E) @ a.W_O.reshape(H * E, cfg.d_model)
    if not cfg.attn_only:
        mlp = model.blocks[0].mlp
        resid = resid + F.relu(resid @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out
    return resid @ model.W_U

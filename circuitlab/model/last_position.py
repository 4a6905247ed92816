"""The logits of the last position only, for one-layer models whose loss reads nothing else (the grokking model of
Nanda et al. 2023: "a b =" -> answer). Used by its training step and by analyses over all p^2 inputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab.model.matmul import linear, linear_relu
from circuitlab.model.model import Transformer


def last_position_logits(model: Transformer, tokens: Tensor) -> Tensor:
    """model(tokens)[:, -1] for a one-layer model without LayerNorm, computing only what the last position needs:
    [batch, d_vocab]. Every input is a (position, token) pair, so the attention scores of the last query are rows of
    a score table: S[h, a, (i, b)] = (x_a W_Q^h) . (x_{i,b} W_K^h) / sqrt(d_head) with x_{i,b} = W_E[b] + W_pos[i],
    [H, V, T * V] for V tokens and T positions, and the values rows of the table x_{i,b} W_V. Each example gathers
    its T scores and values by token, so the attention's cost scales with the vocabulary, not the batch; the matmuls
    left per example are W_O, the MLP (its ReLU inside the first product, `matmul.linear_relu`) and W_U, through
    `matmul.linear` (oneDNN where it is chosen: 1.4x the step on one thread on session 13's AMD CPU,
    `benchmarks/grokking_step.py`)."""
    cfg = model.cfg
    if cfg.n_layers != 1 or cfg.layer_norm or cfg.attn_bias or cfg.positional_embedding_type != "standard":
        raise ValueError("last_position_logits covers the grokking model: 1 layer, standard positions, no LN/biases")
    a = model.blocks[0].attn
    B, T = tokens.shape
    H, E, V = cfg.n_heads, cfg.d_head, cfg.d_vocab
    resid_in = model.W_E[None] + model.W_pos[:T, None]  # [T, V, D]: every (position, token) input
    rows = tokens + V * torch.arange(T, device=tokens.device)  # each (position, token)'s row of the [T * V] tables
    last = tokens[:, -1]
    q = torch.einsum("vd,hde->hve", resid_in[T - 1], a.W_Q)  # [H, V, E]: the query of every last token
    k = torch.einsum("tvd,hde->htve", resid_in, a.W_K).reshape(H, T * V, E)
    scores = (q @ k.transpose(1, 2) / math.sqrt(E)).permute(1, 2, 0).reshape(V * T * V, H)  # [(a, (i, b)), H]
    # F.embedding, not indexing: its backward accumulates rows in one fast pass, where indexing's backward
    # (index_put_ with accumulate) took a third of the step (benchmarks/grokking_step.py)
    pattern = F.embedding(last[:, None] * (T * V) + rows, scores).softmax(1)  # [B, T, H]: the last query sees all T
    v = F.embedding(rows, torch.einsum("tvd,hde->tvhe", resid_in, a.W_V).reshape(T * V, H * E)).view(B, T, H, E)
    z = (pattern[..., None] * v).sum(1)  # [B, H, E]
    resid = linear(z.reshape(B, H * E), a.W_O.reshape(H * E, cfg.d_model), F.embedding(last, resid_in[T - 1]))
    if not cfg.attn_only:
        mlp = model.blocks[0].mlp
        resid = resid + linear(linear_relu(resid, mlp.W_in, mlp.b_in), mlp.W_out, mlp.b_out)
    return linear(resid, model.W_U)

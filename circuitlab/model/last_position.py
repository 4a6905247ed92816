"""The logits of the last position only, for one-layer models whose loss reads nothing else (the grokking model of
Nanda et al. 2023: "a b =" -> answer). Used by its training step and by analyses over all p^2 inputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab.model.matmul import linear, linear_relu_of_bag
from circuitlab.model.model import Transformer


def last_position_logits(model: Transformer, tokens: Tensor) -> Tensor:
    """model(tokens)[:, -1] for a one-layer model without LayerNorm, computing only what the last position needs:
    [batch, d_vocab]. Every input is a (position, token) pair x_{i,b} = W_E[b] + W_pos[i], for V tokens and T
    positions, so everything the attention computes per input is a row of a table over the T * V pairs:

    - the scores of the last query, S[h, a, (i, b)] = (x_a W_Q^h) . (x_{i,b} W_K^h) / sqrt(d_head), [H, V, T * V];
      each example gathers its T scores by token and takes their softmax, the pattern A[b, i, h];
    - what each key's value writes to the residual stream, x_{i,b} W_V^h W_O^h, [T * V * H, d_model]: the
      attention's output is the pattern-weighted sum of an example's T * H rows, one `F.embedding_bag` with the
      last token's own input as one more row of weight 1, so resid_mid = x_last + sum_{i,h} A[b, i, h] v_i^h W_O^h
      takes no per-example W_O product;
    - the same rows times the MLP's W_in, [T * V * H + V, d_mlp]: resid_mid W_in is linear in resid_mid, so the
      pre-activations are the same bag of these rows (`matmul.linear_relu_of_bag`), its backward W_in's as usual.

    The products left per example are the MLP's W_out and W_U forward, and the backward of W_in, W_out and W_U,
    through `matmul.linear` (oneDNN where it is chosen: 1.4x the step on one thread on session 13's AMD CPU,
    `benchmarks/grokking_step.py`). The tables replace per-example W_O and W_in forward products (session 16, kept
    since session 22: 1.09x the step on one thread and 1.06x on two on an AMD EPYC family 25). They sum in another
    order than the per-example products, so the grokking run's trajectory is not the one before them
    (docs/demo-history.md and docs/performance.md, session 22)."""
    cfg = model.cfg
    if cfg.n_layers != 1 or cfg.layer_norm or cfg.attn_bias or cfg.positional_embedding_type != "standard":
        raise ValueError("last_position_logits covers the grokking model: 1 layer, standard positions, no LN/biases")
    a = model.blocks[0].attn
    B, T = tokens.shape
    H, E, V, D = cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.d_model
    resid_in = model.W_E[None] + model.W_pos[:T, None]  # [T, V, D]: every (position, token) input
    rows = tokens + V * torch.arange(T, device=tokens.device)  # each (position, token)'s row of the [T * V] tables
    last = tokens[:, -1]
    q = torch.einsum("vd,hde->hve", resid_in[T - 1], a.W_Q)  # [H, V, E]: the query of every last token
    k = torch.einsum("tvd,hde->htve", resid_in, a.W_K).reshape(H, T * V, E)
    scores = (q @ k.transpose(1, 2) / math.sqrt(E)).permute(1, 2, 0).reshape(V * T * V, H)  # [(a, (i, b)), H]
    # F.embedding, not indexing: its backward accumulates rows in one fast pass, where indexing's backward
    # (index_put_ with accumulate) took a third of the step (benchmarks/grokking_step.py)
    pattern = F.embedding(last[:, None] * (T * V) + rows, scores).softmax(1)  # [B, T, H]: the last query sees all T
    v = torch.einsum("tvd,hde->htve", resid_in, a.W_V).reshape(H, T * V, E)
    # [(i, b, h), D]: x_{i,b} W_V^h W_O^h, then the V rows x_{T-1,b} (the last token's own input)
    table = torch.cat([torch.bmm(v, a.W_O).transpose(0, 1).reshape(T * V * H, D), resid_in[T - 1]])
    heads = torch.arange(H, device=tokens.device)
    bags = torch.cat([(rows[:, :, None] * H + heads).reshape(B, T * H), T * V * H + last[:, None]], 1)
    weights = torch.cat([pattern.reshape(B, T * H), pattern.new_ones(B, 1)], 1).to(table.dtype)  # (autocast)
    resid = F.embedding_bag(bags, table, per_sample_weights=weights, mode="sum")  # [B, D]: resid_mid
    if not cfg.attn_only:
        mlp = model.blocks[0].mlp
        post = linear_relu_of_bag(resid, mlp.W_in, mlp.b_in, bags, weights, table)
        resid = resid + linear(post, mlp.W_out, mlp.b_out)
    return linear(resid, model.W_U)

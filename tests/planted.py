"""Models with hand-set weights whose circuits are known, for testing the analyses.

Residual-stream layout (shortformer positions, so positions enter only Q and K):
  dims [0, V)          the current token (W_E = identity there)
  dims [V, 2V)         the previous token (written by a previous-token head's OV)
  dims [2V, 2V + n)    the position (W_pos = identity there)
"""

from __future__ import annotations

import torch

from circuitlab.model import ModelConfig, Transformer

SHARP = 200.0  # attention-score scale: large enough that softmax is nearly one-hot


# A vocabulary large enough that random sequences rarely repeat a token within their first copy.


def _blank(n_layers: int, V: int, n_ctx: int, n_heads: int, d_head: int, d_model: int | None = None, noise: float = 0.02) -> Transformer:
    cfg = ModelConfig(n_layers=n_layers, d_model=d_model or 2 * V + n_ctx, n_heads=n_heads, d_head=d_head,
                      n_ctx=n_ctx, d_vocab=V, positional_embedding_type="shortformer")
    m = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():  # unplanted heads: small random weights (never exactly zero: scores stay defined)
            p.copy_(noise * torch.randn(p.shape, generator=g))
        m.W_E.zero_()
        m.W_E[:, :V] = torch.eye(V)
        m.W_pos.zero_()
        if cfg.d_model >= 2 * V + n_ctx:
            m.W_pos[:, 2 * V : 2 * V + n_ctx] = torch.eye(n_ctx)
        m.W_U.zero_()
        m.W_U[:V] = torch.eye(V)
    return m


def bigram_model(table: torch.Tensor) -> Transformer:
    """0 layers with W_E W_U = table exactly."""
    V = table.shape[0]
    m = Transformer(ModelConfig(n_layers=0, d_model=V, n_heads=1, d_head=1, n_ctx=8, d_vocab=V))
    with torch.no_grad():
        m.W_E.copy_(torch.eye(V))
        m.W_U.copy_(table)
    return m


def copying_model(V: int = 12) -> Transformer:
    """1 layer, 3 heads: 0.0 copies (OV = +I on tokens), 0.1 anti-copies (OV = -I), 0.2 is random."""
    m = _blank(1, V, n_ctx=8, n_heads=3, d_head=V, d_model=V, noise=0.3)
    with torch.no_grad():
        a = m.blocks[0].attn
        for h, sign in ((0, 1.0), (1, -1.0)):
            a.W_V[h] = torch.eye(V)
            a.W_O[h] = sign * torch.eye(V)
            a.W_Q[h] = torch.eye(V)  # QK = +I: attends to its own token (QK copying statistic +1)
            a.W_K[h] = sign * torch.eye(V)
        m.W_U.copy_(torch.eye(V))
    return m


def _plant_previous_token_head(m: Transformer, layer: int, head: int, V: int, n_ctx: int) -> None:
    """Query at position p matches key at position p - 1 through the positional dims; OV moves the token from
    dims [0, V) to the previous-token dims [V, 2V)."""
    a = m.blocks[layer].attn
    a.W_Q[head].zero_(), a.W_K[head].zero_(), a.W_V[head].zero_(), a.W_O[head].zero_()
    for p in range(n_ctx):
        a.W_Q[head, 2 * V + p, p] = SHARP
        if p + 1 < n_ctx:
            a.W_K[head, 2 * V + p, p + 1] = 1.0
    a.W_V[head, :V, :V] = torch.eye(V)
    a.W_O[head, :V, V : 2 * V] = torch.eye(V)


def previous_token_model(V: int = 10, n_ctx: int = 16) -> Transformer:
    """1 layer, 2 heads: 0.0 attends to the previous position (positional QK); 0.1 is random."""
    m = _blank(1, V, n_ctx, n_heads=2, d_head=max(V, n_ctx))
    with torch.no_grad():
        _plant_previous_token_head(m, 0, 0, V, n_ctx)
    return m


def induction_model(V: int = 200, n_ctx: int = 48, n_heads: int = 2) -> Transformer:
    """2 layers: 0.0 is a previous-token head; 1.1 is an induction head that K-composes with it: its key reads the
    previous-token dims, its query the current token, and its OV copies the attended token to the logits."""
    m = _blank(2, V, n_ctx, n_heads=n_heads, d_head=max(V, n_ctx))
    with torch.no_grad():
        _plant_previous_token_head(m, 0, 0, V, n_ctx)
        a = m.blocks[1].attn
        a.W_Q[1].zero_(), a.W_K[1].zero_(), a.W_V[1].zero_(), a.W_O[1].zero_()
        a.W_Q[1, :V, :V] = SHARP * torch.eye(V)  # query: current token t
        a.W_K[1, V : 2 * V, :V] = torch.eye(V)  # key: previous token of the key position
        a.W_V[1, :V, :V] = torch.eye(V)
        a.W_O[1, :V, :V] = 20 * torch.eye(V)  # copy the attended token, with confident logits
    return m


def virtual_head_model(V: int = 20, n_ctx: int = 24) -> Transformer:
    """2 layers, 1 head each, whose answer is a virtual head (V-composition): 0.0 is a previous-token head writing
    the previous token into dims [V, 2V); 1.0 attends to its own position and its OV reads those dims into the
    logits. Together they predict 'next token = the token before the current one' (period-2 sequences), a path
    through both heads (order 2), while each head alone reads nothing useful from the embeddings."""
    m = _blank(2, V, n_ctx, n_heads=1, d_head=max(V, n_ctx))
    with torch.no_grad():
        _plant_previous_token_head(m, 0, 0, V, n_ctx)
        a = m.blocks[1].attn
        a.W_Q[0].zero_(), a.W_K[0].zero_(), a.W_V[0].zero_(), a.W_O[0].zero_()
        for p in range(n_ctx):
            a.W_Q[0, 2 * V + p, p] = SHARP
            a.W_K[0, 2 * V + p, p] = 1.0
        a.W_V[0, V : 2 * V, :V] = torch.eye(V)
        a.W_O[0, :V, 2 * V : 3 * V] = 20 * torch.eye(V)  # into residual dims the shortformer positions leave free
        m.W_U.zero_()  # no direct path: the logits read only what 1.0 writes
        m.W_U[2 * V : 3 * V] = torch.eye(V)
    return m

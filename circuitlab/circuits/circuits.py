"""The token circuits of an attention-only model, read from its weights (Elhage et al. 2021, 'Path expansion').

Row-vector (TransformerLens) layout, so products read left to right:
  direct path      W_E W_U                        [d_vocab, d_vocab]
  OV circuit (h)   W_E W_V^h W_O^h W_U            [d_vocab, d_vocab]: effect on the logits of attending to a token
  QK circuit (h)   W_E W_Q^h (W_E W_K^h)^T        [d_vocab, d_vocab]: score of (query token, key token)
Each is a FactoredMatrix over every head at once ([n_layers, n_heads, d_vocab, d_vocab], inner dim d_head), so
nothing vocab x vocab is materialised unless asked. For shortformer models these are the token parts only: the
positional embedding enters Q and K, never the residual stream.

Works on any model exposing TransformerLens's stacked weights (circuitlab.Transformer, TransformerBridge).
"""

from __future__ import annotations

import torch
from transformer_lens import FactoredMatrix


def ov_circuit(model) -> FactoredMatrix:
    """W_E W_V W_O W_U for every head: [n_layers, n_heads, d_vocab, d_vocab]."""
    return FactoredMatrix(model.W_E @ model.W_V, model.W_O @ model.W_U)


def qk_circuit(model) -> FactoredMatrix:
    """W_E W_Q W_K^T W_E^T for every head: [n_layers, n_heads, d_vocab (query), d_vocab (key)]."""
    return FactoredMatrix(model.W_E @ model.W_Q, (model.W_E @ model.W_K).transpose(-2, -1))


def positional_qk_circuit(model) -> FactoredMatrix:
    """W_pos W_Q W_K^T W_pos^T: [n_layers, n_heads, n_ctx (query pos), n_ctx (key pos)]."""
    return FactoredMatrix(model.W_pos @ model.W_Q, (model.W_pos @ model.W_K).transpose(-2, -1))


def direct_path(model) -> torch.Tensor:
    """W_E W_U: [d_vocab, d_vocab], the zero-layer model's bigram logits and every model's direct path."""
    return model.W_E @ model.W_U


@torch.no_grad()
def copying_statistic(circuit: FactoredMatrix) -> torch.Tensor:
    """Elhage et al. 2021 ('Summarizing OV/QK matrices'): sum(lambda) / sum(|lambda|) over the eigenvalues of a
    square circuit, in [-1, 1]; +1 means copying (positive eigenvalues), -1 anti-copying.

    Computed from the d_head x d_head matrix BA, whose eigenvalues are the non-zero eigenvalues of AB (cycle the
    product), so a [d_vocab, d_vocab] eigendecomposition is never needed. Returns one value per leading index.
    """
    lam = circuit.eigenvalues
    return lam.sum(-1).real / lam.abs().sum(-1).clamp_min(1e-30)

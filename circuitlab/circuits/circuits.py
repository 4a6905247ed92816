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


def unembedding(model) -> torch.Tensor:
    """W_U as the residual stream reaches it: [d_model, d_vocab]. A final LayerNorm without weights (`final_norm`,
    TransformerLens's LNPre) centres the stream, x -> x - mean(x), so the component of W_U along the all-ones
    direction never acts and is removed: (I - 11^T / d_model) W_U. Its per-position scale 1 / sigma(x) is left out,
    as the Framework paper does for LayerNorm (the circuits are then exact up to one positive factor per position).
    Without a final LayerNorm, W_U itself."""
    W_U = model.W_U
    if getattr(model.cfg, "final_norm", False):  # (a circuitlab config; it excludes layer_norm)
        return W_U - W_U.mean(0, keepdim=True)
    return W_U


def ov_circuit(model) -> FactoredMatrix:
    """W_E W_V W_O W_U for every head: [n_layers, n_heads, d_vocab, d_vocab] (W_U: `unembedding`)."""
    return FactoredMatrix(model.W_E @ model.W_V, model.W_O @ unembedding(model))


def qk_circuit(model) -> FactoredMatrix:
    """W_E W_Q W_K^T W_E^T for every head: [n_layers, n_heads, d_vocab (query), d_vocab (key)]."""
    return FactoredMatrix(model.W_E @ model.W_Q, (model.W_E @ model.W_K).transpose(-2, -1))


def positional_qk_circuit(model) -> FactoredMatrix:
    """W_pos W_Q W_K^T W_pos^T: [n_layers, n_heads, n_ctx (query pos), n_ctx (key pos)]."""
    return FactoredMatrix(model.W_pos @ model.W_Q, (model.W_pos @ model.W_K).transpose(-2, -1))


def direct_path(model) -> torch.Tensor:
    """W_E W_U: [d_vocab, d_vocab], the zero-layer model's bigram logits and every model's direct path. With a final
    LayerNorm (`final_norm`) the embedding goes through it first, LNPre(W_E) W_U: the zero-layer model's logits
    exactly (its residual stream is the embedding alone)."""
    if getattr(model.cfg, "final_norm", False):
        return model.ln_final(model.W_E) @ model.W_U
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


def row_chunks(A: torch.Tensor, B: torch.Tensor, chunk: int = 256):
    """Yield (row_start, A[rows] @ B) over row chunks of a 2-D product, never holding the whole matrix."""
    for start in range(0, A.shape[0], chunk):
        yield start, A[start : start + chunk] @ B


@torch.no_grad()
def top_entries(circuit: FactoredMatrix, k: int = 20, rows: torch.Tensor | None = None,
                cols: torch.Tensor | None = None, chunk: int = 256) -> list[tuple[int, int, float]]:
    """The k largest entries (row, col, value) of a 2-D factored [n, m] circuit, computed chunk by chunk over rows
    (memory chunk x m, never n x m). rows / cols restrict the search to given indices (e.g. common tokens)."""
    A, B = circuit.A, circuit.B
    if A.dim() != 2:
        raise ValueError(f"top_entries takes one head's 2-D circuit, got shape {tuple(circuit.shape)}")
    rows = torch.arange(A.shape[0]) if rows is None else rows
    cols = torch.arange(B.shape[1]) if cols is None else cols
    A, B = A[rows], B[:, cols]
    best_v, best_i = torch.empty(0), torch.empty(0, dtype=torch.long)
    for start, block in row_chunks(A, B, chunk):
        v, i = block.flatten().topk(min(k, block.numel()))
        best_v = torch.cat([best_v, v.float().cpu()])
        best_i = torch.cat([best_i, i.cpu() + start * B.shape[1]])
        keep = best_v.topk(min(k, len(best_v))).indices
        best_v, best_i = best_v[keep], best_i[keep]
    order = best_v.argsort(descending=True)
    return [(int(rows[i // B.shape[1]]), int(cols[i % B.shape[1]]), float(v))
            for v, i in zip(best_v[order], best_i[order])]


@torch.no_grad()
def top1_diagonal_accuracy(circuit: FactoredMatrix, tokens: torch.Tensor | None = None, chunk: int = 256) -> torch.Tensor:
    """Share of tokens t whose row of a square [.., d_vocab, d_vocab] circuit (e.g. the full OV circuit
    W_E W_OV W_U) is largest on its own diagonal entry: the head's output raises the attended token above every
    other token. Chunked over rows; `tokens` restricts both rows and columns. Returns one value per leading index."""
    A, B = circuit.A, circuit.B
    idx = torch.arange(A.shape[-2]) if tokens is None else tokens
    A, B = A[..., idx, :], B[..., :, idx]
    hits = torch.zeros(A.shape[:-2])
    for start in range(0, A.shape[-2], chunk):
        block = A[..., start : start + chunk, :] @ B  # [..., chunk, n]
        own = torch.arange(start, start + block.shape[-2])
        hits += (block.argmax(-1) == own).float().sum(-1).cpu()
    return hits / len(idx)

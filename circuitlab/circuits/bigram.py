"""Zero-layer models: the direct path W_E W_U against the corpus's bigram statistics (Elhage et al. 2021,
'Zero-Layer Transformers': log_softmax(W_E W_U) approximates the bigram log-likelihood)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from circuitlab.circuits.circuits import direct_path
from circuitlab.results import Result


@dataclass
class Bigram(Result):
    """prev -> next: the model's direct-path probability and the corpus's."""

    prev: str
    next: str
    model_prob: float
    corpus_prob: float
    corpus_count: int


@dataclass
class BigramAgreement(Result):
    """Over previous tokens seen at least `min_count` times in the corpus:
    correlation: Pearson r of model vs empirical log P(next | prev) over bigrams seen at least 5 times;
    mean_kl: mean over previous tokens of KL(empirical || model) in nats;
    top1 / top5: share of previous tokens whose most frequent next token is the model's top-1 / in its top-5;
    strongest: the bigrams the weights rank highest, with their corpus counts."""

    correlation: float
    mean_kl: float
    top1: float
    top5: float
    n_prev_tokens: int
    n_bigrams_compared: int
    strongest: list[Bigram]


def bigram_counts(tokens: np.ndarray, d_vocab: int) -> np.ndarray:
    """[d_vocab, d_vocab] counts of (prev, next) pairs in a token stream."""
    t = np.asarray(tokens, dtype=np.int64)
    return np.bincount(t[:-1] * d_vocab + t[1:], minlength=d_vocab * d_vocab).reshape(d_vocab, d_vocab)


@torch.no_grad()
def bigram_agreement(model, tokens: np.ndarray, min_count: int = 100, decode=None, n_strongest: int = 20) -> BigramAgreement:
    V = model.cfg.d_vocab
    counts = bigram_counts(tokens, V)
    row_totals = counts.sum(1)
    prevs = np.nonzero(row_totals >= min_count)[0]
    if len(prevs) == 0:
        raise ValueError(f"no token occurs {min_count} times; pass more tokens or a lower min_count")
    model_lp = torch.log_softmax(direct_path(model).float(), -1).cpu().numpy()[prevs]  # [P, V]
    c = counts[prevs].astype(np.float64)
    emp_p = c / c.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        emp_lp = np.log(emp_p)
        kl = np.where(emp_p > 0, emp_p * (emp_lp - model_lp), 0.0).sum(1)
    seen = c >= 5
    with np.errstate(divide="ignore", invalid="ignore"):  # r is NaN (undefined) where either side is constant
        r = float(np.corrcoef(model_lp[seen], emp_lp[seen])[0, 1]) if seen.sum() > 2 else float("nan")
    emp_top = c.argmax(1)
    model_top5 = np.argsort(-model_lp, axis=1)[:, :5]
    flat = np.argsort(-model_lp, axis=None)[:n_strongest]
    rows, cols = np.unravel_index(flat, model_lp.shape)
    show = decode or (lambda t: str(t))
    strongest = [
        Bigram(show(int(prevs[i])), show(int(j)), float(np.exp(model_lp[i, j])), float(emp_p[i, j]), int(c[i, j]))
        for i, j in zip(rows, cols)
    ]
    return BigramAgreement(
        correlation=r, mean_kl=float(kl.mean()), top1=float((model_top5[:, 0] == emp_top).mean()),
        top5=float((model_top5 == emp_top[:, None]).any(1).mean()), n_prev_tokens=int(len(prevs)),
        n_bigrams_compared=int(seen.sum()), strongest=strongest,
    )

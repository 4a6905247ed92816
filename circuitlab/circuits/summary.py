"""Every weight-and-pattern analysis of one model, as `circuitlab analyze` shows it."""

from __future__ import annotations

import numpy as np
import torch

from circuitlab.circuits.bigram import bigram_agreement
from circuitlab.circuits.circuits import copying_statistic, ov_circuit, qk_circuit
from circuitlab.circuits.composition import composition_scores
from circuitlab.circuits.heads import head_scores
from circuitlab.circuits.result import to_jsonable

# Role thresholds (ours, stated so they can be argued with): a head is called a previous-token head when it puts
# > 40% of its attention on the previous token of text, an induction head when it puts > 30% on the token after the
# earlier copy in repeated random tokens, and copying when its OV copying statistic is > 0.5.
PREVIOUS_TOKEN, INDUCTION, COPYING = 0.4, 0.3, 0.5


def common_token_pool(tokens: np.ndarray, d_vocab: int, skip_fraction: float = 0.1) -> torch.Tensor:
    """Tokens for random sequences, skipping the most and least common (Olsson et al. 2022, prefix matching)."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=d_vocab)
    order = np.argsort(-counts)
    seen = order[counts[order] > 0]
    k = int(len(seen) * skip_fraction)
    pool = seen[k : len(seen) - k] if len(seen) - 2 * k >= 10 else seen
    return torch.as_tensor(np.sort(pool[pool != 0]))


def text_windows(tokens: np.ndarray, n_ctx: int, n: int = 10, bos: int = 0, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - n_ctx, size=n)
    w = np.stack([np.asarray(tokens[s : s + n_ctx - 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(np.concatenate([np.full((n, 1), bos), w], axis=1))


def analyze_model(model, train_tokens: np.ndarray, heldout_tokens: np.ndarray, decode=None) -> dict:
    """Bigram agreement of the direct path; per-head copying statistics and scores; composition. JSON-ready."""
    cfg = model.cfg
    out: dict = {"model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab}}
    out["bigram_agreement"] = bigram_agreement(model, train_tokens, decode=decode).to_json()
    if cfg.n_layers == 0:
        return out
    ov = copying_statistic(ov_circuit(model))
    qk = copying_statistic(qk_circuit(model))
    scores = head_scores(model, text_windows(heldout_tokens, cfg.n_ctx), bos=0,
                         allowed=common_token_pool(train_tokens, cfg.d_vocab))
    heads = []
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            roles = [name for name, hit in (
                ("previous-token", scores.previous_token[l, h] > PREVIOUS_TOKEN),
                ("induction", l > 0 and scores.induction[l, h] > INDUCTION),
                ("copying", ov[l, h] > COPYING)) if hit]
            heads.append({"head": f"{l}.{h}", "ov_copying": float(ov[l, h]), "qk_copying": float(qk[l, h]),
                          "previous_token": float(scores.previous_token[l, h]), "induction": float(scores.induction[l, h]),
                          "prefix_matching": float(scores.prefix_matching[l, h]),
                          "duplicate_token": float(scores.duplicate_token[l, h]), "roles": roles})
    out["heads"] = heads
    out["head_score_settings"] = scores.settings
    out["copying_heads"] = {"count": sum("copying" in h["roles"] for h in heads), "of": len(heads),
                            "threshold": COPYING}
    if cfg.n_layers >= 2:
        comp = composition_scores(model)
        out["composition"] = {"random_baseline": comp.random_baseline,
                              **{m: comp.top(m, 8) for m in ("q", "k", "v")}}
        # for each induction head, the earlier head it K-composes with most
        out["induction_mechanism"] = []
        for h in heads:
            if "induction" in h["roles"]:
                l, i = map(int, h["head"].split("."))
                k = torch.nan_to_num(comp.k[:, :, l, i], nan=-float("inf"))
                src = int(k.argmax())
                out["induction_mechanism"].append({"induction_head": h["head"],
                                                   "k_composes_with": f"{src // cfg.n_heads}.{src % cfg.n_heads}",
                                                   "k_composition": float(k.flatten()[src])})
    return to_jsonable(out)

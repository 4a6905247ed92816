"""Every weight-and-pattern analysis of one model, as `circuitlab analyze` shows it."""

from __future__ import annotations

import time

import numpy as np
import torch
from transformer_lens import FactoredMatrix

from circuitlab.circuits.attribution import induction_mechanism, positional_content_split
from circuitlab.circuits.bigram import bigram_agreement
from circuitlab.circuits.circuits import copying_statistic, ov_circuit, qk_circuit, top1_diagonal_accuracy
from circuitlab.circuits.competition import competition_from_table, competition_model, softmax_competition
from circuitlab.circuits.composition import composition_scores
from circuitlab.circuits.heads import head_scores
from circuitlab.circuits.result import to_jsonable
from circuitlab.circuits.skip_trigrams import skip_trigram_bugs, skip_trigram_table
from circuitlab.circuits.term_importance import term_importance

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


def token_pool(tokens: np.ndarray, d_vocab: int, min_count: int = 100, bos: int = 0) -> torch.Tensor:
    """Tokens seen at least `min_count` times (their rows of the token circuits are trained), without BOS."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=d_vocab)
    pool = np.nonzero(counts >= min_count)[0]
    return torch.as_tensor(pool[pool != bos])


def _combined(fm: FactoredMatrix, heads: list[tuple[int, int]]) -> FactoredMatrix:
    """The sum of several heads' circuits, still factored: sum_h A_h B_h = [A_1 .. A_n] [B_1; ..; B_n]."""
    return FactoredMatrix(torch.cat([fm.A[l, h] for l, h in heads], -1), torch.cat([fm.B[l, h] for l, h in heads], -2))


def _maybe_json(r):
    return None if r is None else r.to_json()


def histogram(values: list[float], lo: float = -1.0, hi: float = 1.0, bins: int = 10) -> dict:
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def analyze_model(model, train_tokens: np.ndarray, heldout_tokens: np.ndarray, decode=None, n_text: int = 32,
                  trigram_corpus_tokens: int = 2_000_000) -> dict:
    """Every analysis of the Framework paper that applies to this model, JSON-ready (see `circuitlab analyze`).
    `seconds` records how long each took."""
    cfg = model.cfg
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t0 = time.perf_counter()
        r = fn(*a, **k)
        timings[name] = round(time.perf_counter() - t0, 3)
        return r

    out: dict = {"model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab,
                           "d_model": cfg.d_model, "positional_embedding_type": cfg.positional_embedding_type,
                           "smeared_keys": getattr(cfg, "smeared_keys", False)}}
    out["bigram_agreement"] = timed("bigram_agreement", bigram_agreement, model, train_tokens, decode=decode).to_json()
    out["seconds"] = timings
    if cfg.n_layers == 0:
        return to_jsonable(out)
    ovc, qkc = ov_circuit(model), qk_circuit(model)
    ov = timed("copying_statistic", copying_statistic, ovc)
    qk = copying_statistic(qkc)
    pool = token_pool(train_tokens, cfg.d_vocab)
    if len(pool) < 10:  # a tiny corpus: every token it has
        pool = token_pool(train_tokens, cfg.d_vocab, min_count=1)
    text = text_windows(heldout_tokens, cfg.n_ctx, n=n_text)
    common = common_token_pool(train_tokens, cfg.d_vocab)
    scores = timed("head_scores", head_scores, model, text[:10], bos=0, allowed=common)
    # The score split, term importance and the induction mechanism are exact path expansions: they need the
    # paper's setting (attention only, no LayerNorm, no biases).
    linear = (getattr(cfg, "attn_only", False) and getattr(cfg, "normalization_type", None) is None
              and not getattr(cfg, "attn_bias", False))
    split = timed("positional_content_split", positional_content_split, model, text[:10], scores.previous_token,
                  PREVIOUS_TOKEN) if linear else None
    diag = timed("ov_top1_diagonal", top1_diagonal_accuracy, ovc, pool)
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
                          "copying_score": float(scores.copying[l, h]),
                          "duplicate_token": float(scores.duplicate_token[l, h]),
                          "positional_share": float(split.positional[l, h]) if split else None,
                          "content_share": float(split.content[l, h]) if split else None,
                          "attention_driver": split.roles[l][h] if split else None,
                          "ov_top1_diagonal": float(diag[l, h]),
                          "roles": roles})
    out["heads"] = heads
    out["head_score_settings"] = {**scores.settings, "ov_top1_diagonal_tokens": int(len(pool))}
    out["copying_heads"] = {"count": sum("copying" in h["roles"] for h in heads), "of": len(heads),
                            "threshold": COPYING, "ov_histogram": histogram(ov.flatten().tolist()),
                            "qk_histogram": histogram(qk.flatten().tolist())}

    # Skip-trigrams of layer-0 heads (exact token circuits in a one-layer model), their bugs, and the softmax caveat.
    t0 = time.perf_counter()
    # Tables read better without tokens that decode to partial UTF-8 sequences ('\ufffd'), rare byte pieces whose
    # large embedding norms would otherwise top every table.
    text_pool = torch.as_tensor([int(t) for t in pool if "\ufffd" not in decode(int(t))]) if decode else pool
    tables = [skip_trigram_table(model, 0, h, text_pool if len(text_pool) >= 10 else pool, decode)
              for h in range(cfg.n_heads)]
    corpus = np.asarray(train_tokens[:trigram_corpus_tokens])
    out["skip_trigrams"] = [t.to_json() for t in tables]
    out["skip_trigram_bugs"] = [b.to_json() for t in tables
                                for b in skip_trigram_bugs(t, corpus, cfg.n_ctx, decode, n=2)]
    timings["skip_trigrams"] = round(time.perf_counter() - t0, 3)
    out["softmax_competition"] = {
        "hand_built": softmax_competition(competition_model(), 0, 0, source=1, dest=3, thief=2, out=4,
                                          decode=lambda t: "BOS A B D X Y".split()[t]).to_json(),
        "trained": _maybe_json(competition_from_table(model, tables, pool, decode=decode))
        if cfg.n_layers == 1 and linear else None,
    }

    if cfg.n_layers >= 2:
        comp = timed("composition_scores", composition_scores, model)
        out["composition"] = {"random_baseline": comp.random_baseline, "k_matrix": comp.k, "q_matrix": comp.q,
                              "v_matrix": comp.v, **{m: comp.top(m, 8) for m in ("q", "k", "v")}}
        out["induction_mechanism"] = []
        induction = [tuple(map(int, h["head"].split("."))) for h in heads if "induction" in h["roles"]]
        # With no head above the threshold, still decompose the best candidate (flagged) to show how it is forming.
        later = [h for h in heads if int(h["head"].split(".")[0]) > 0]
        best = max(later, key=lambda h: h["induction"])
        examined = induction or ([tuple(map(int, best["head"].split(".")))] if best["induction"] >= 0.1 else [])
        t0 = time.perf_counter()
        for l, i in examined if linear else []:
            mech = induction_mechanism(model, l, i, allowed=common)
            k = torch.nan_to_num(comp.k[:, :, l, i], nan=-float("inf"))
            src = int(k.argmax())
            out["induction_mechanism"].append({
                **mech.to_json(), "induction_head": f"{l}.{i}", "above_threshold": (l, i) in induction,
                "induction_score": float(scores.induction[l, i]),
                "top_k_composition_head": f"{src // cfg.n_heads}.{src % cfg.n_heads}",
                "k_composition": float(k.flatten()[src]),
                "k_composition_with_share_head": float(k[tuple(map(int, mech.k_composes_with.split(".")))]),
            })
        timings["induction_mechanism"] = round(time.perf_counter() - t0, 3)
        if induction:
            out["induction_heads_ov_top1_diagonal"] = float(top1_diagonal_accuracy(_combined(ovc, induction), pool))
    if linear:
        out["term_importance"] = timed("term_importance", term_importance, model, text).to_json()
    return to_jsonable(out)

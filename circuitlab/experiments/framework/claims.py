"""The Framework paper's claims (Elhage et al. 2021), judged on the analyses of the 0/1/2-layer models."""

from __future__ import annotations

from circuitlab.experiments.claims import Claim, verdict
from circuitlab.experiments.framework.results import ModelAnalysis

PAPER = "Elhage et al. 2021"
MANY_COPYING = 0.25
# Term importance: the paper's individual head terms add 5.2 nats and virtual heads 0.3 (6% of it). Heads that add
# under half a nat do little (a barely trained model's add ~0); virtual heads must add under a quarter of theirs.
HEADS_MATTER = 0.5
VIRTUAL_SHARE = 0.25


def framework_claims(analyses: dict[str, ModelAnalysis]) -> list[Claim]:
    """analyses: {'attn0': ..., 'attn1': ..., 'attn2': ...} (any subset)."""
    claims = []
    if "attn0" in analyses:
        b = analyses["attn0"].bigram_agreement
        claims.append(Claim(
            PAPER, "A zero-layer transformer's logits W_E W_U approximate the corpus bigram statistics",
            "W_E W_U ≈ log bigram table (r > 0.5; the corpus's top next token usually the model's)",
            f"r = {b.correlation:.3f} over {b.n_bigrams_compared:,} bigrams; top-1 agreement {100 * b.top1:.0f}%, "
            f"top-5 {100 * b.top5:.0f}%; mean KL {b.mean_kl:.2f} nats", verdict(b.correlation > 0.5),
            "circuits-bigram"))
    if "attn1" in analyses:
        a = analyses["attn1"]
        c = a.copying_heads
        claims.append(Claim(
            PAPER, "Most one-layer attention heads are copying heads (OV circuit with mostly positive eigenvalues)",
            "10 of 12 heads (a majority)", f"{c.count} of {c.of} heads with eigenvalue statistic > {c.threshold}",
            verdict(c.count > c.of / 2), "circuits-copying"))
        rows = [r for t in a.skip_trigrams for r in t.rows]
        copying = sum(r.copies for r in rows)
        # "Many": at least a quarter of the heads' strongest sources predict themselves. By chance a source is among
        # its own 5 top outs with probability 5 / (tokens in the pool), about 1% here.
        claims.append(Claim(
            PAPER, "One-layer heads implement skip-trigrams [source] … [destination] → [out], many of them copying "
            "(out = source)", f"≥ {100 * MANY_COPYING:.0f}% of the top source tokens among their own 5 top outs",
            f"{copying} of {len(rows)} top source tokens have themselves among their 5 top outs "
            f"({len(a.skip_trigram_bugs)} skip-trigram 'bugs' found in the corpus)",
            verdict(len(rows) > 0 and copying >= MANY_COPYING * len(rows)), "circuits-skip-trigrams"))
    if "attn2" in analyses and analyses["attn2"].composition is not None:
        a = analyses["attn2"]
        comp = a.composition
        best_ind = max((h for h in a.heads if h.head.layer >= 1), key=lambda h: h.induction)
        best_prev = max((h for h in a.heads if h.head.layer == 0), key=lambda h: h.previous_token)
        top_k = comp.k[0] if comp.k else None
        mech = next((m for m in a.induction_mechanism if m.head == best_ind.head), None)
        share = mech.k_composition_share if mech and mech.k_composes_with == best_prev.head else None
        # Statistic: the strongest raw K-composition pair. It must be previous-token head -> induction head, both
        # heads must hold their roles (circuitlab.heads), and its raw score must exceed the mean score of random
        # matrices of the same shapes (Elhage et al. 2021, 'Composition': the baseline is subtracted once).
        roles = "induction" in best_ind.roles and "previous-token" in best_prev.roles
        pair = top_k is not None and top_k.sender == best_prev.head and top_k.receiver == best_ind.head
        ok = roles and pair and top_k.score > comp.random_baseline
        claims.append(Claim(
            PAPER, "Two-layer models form induction heads by K-composition with a previous-token head",
            "the strongest K-composition pair is previous-token head → induction head, above the random baseline",
            f"strongest K-composition {top_k.sender} → {top_k.receiver}: raw score {top_k.score:.3f} vs random "
            f"baseline {comp.random_baseline:.3f}; best previous-token head {best_prev.head} "
            f"({best_prev.previous_token:.2f}), best induction head {best_ind.head} ({best_ind.induction:.2f})"
            + (f"; {100 * share:.0f}% of {best_ind.head}'s score margin on the target comes through "
               f"{best_prev.head}'s output" if share is not None else "")
            if top_k else "no composition scores", verdict(ok), "circuits-composition"))
        t = a.term_importance
        if t is not None and len(t.improvement) >= 3:
            d, h, v = t.improvement[:3]
            claims.append(Claim(
                PAPER, "Term importance in a two-layer model: the direct path and individual heads matter most, virtual "
                "heads (V-composition) little",
                f"individual heads ≥ {HEADS_MATTER} nats; virtual heads < {VIRTUAL_SHARE:.0%} of them and below the "
                "direct path (paper's model: direct 1.8, individual heads 5.2, virtual heads 0.3 nats)",
                f"direct {d:.2f}, individual heads {h:.2f}, virtual heads {v:.2f} nats (frozen patterns, "
                f"{t.n_tokens:,} held-out tokens)", verdict(h >= HEADS_MATTER and v < VIRTUAL_SHARE * h and v < d),
                "circuits-terms"))
    return claims

"""The Framework paper's circuits (Elhage et al. 2021), read from trained models' weights: the zero-layer bigram
table, one-layer copying heads and skip-trigrams, two-layer composition and induction heads, term importance.
`analyze_run` writes RUN/analysis.json (as `circuitlab analyze` does); `circuits_claims` turns the analyses of
the 0/1/2-layer models into claims."""

from __future__ import annotations

import json
from pathlib import Path

from circuitlab.experiments.claims import Claim, verdict
from circuitlab.training.checkpoints import atomic_write_text

PAPER = "Elhage et al. 2021"


def analyze_run(run_dir: Path | str, out: Path | str | None = None, step: int | None = None,
                reuse: bool = True) -> dict:
    """Analyse a run's checkpoint at `step` (default: the last) and write the result to `out` (default
    RUN/analysis.json); with `reuse`, an analysis already there for that run and checkpoint is returned as it is."""
    from circuitlab.circuits.summary import analyze_model
    from circuitlab.training import Run

    run = Run.open(run_dir)
    model = run.model(step)  # checks that the step exists
    step = step if step is not None else run.checkpoints[-1]
    out = Path(out) if out else Path(run_dir) / "analysis.json"
    if reuse and out.exists():
        old = json.loads(out.read_text())
        if old.get("step") == step and old.get("run") == str(run_dir):
            return old
    data = run.tokens()
    decode = lambda t: data.tokenizer.decode([t])  # noqa: E731
    result = {"run": str(run_dir), "step": step, "tokens": step * run.train_config.batch_size * run.config.n_ctx,
              **analyze_model(model, data.train, data.val, decode=decode)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    return result


def circuits_claims(analyses: dict[str, dict]) -> list[Claim]:
    """analyses: {'attn0': ..., 'attn1': ..., 'attn2': ...} (any subset)."""
    claims = []
    if "attn0" in analyses:
        b = analyses["attn0"]["bigram_agreement"]
        claims.append(Claim(
            PAPER, "A zero-layer transformer's logits W_E W_U approximate the corpus bigram statistics",
            "W_E W_U ≈ log bigram table (r > 0.5; the corpus's top next token usually the model's)",
            f"r = {b['correlation']:.3f} over {b['n_bigrams_compared']:,} bigrams; top-1 agreement {100 * b['top1']:.0f}%, "
            f"top-5 {100 * b['top5']:.0f}%; mean KL {b['mean_kl']:.2f} nats", verdict(b["correlation"] > 0.5),
            "circuits-bigram"))
    if "attn1" in analyses:
        a = analyses["attn1"]
        c = a["copying_heads"]
        claims.append(Claim(
            PAPER, "Most one-layer attention heads are copying heads (OV circuit with mostly positive eigenvalues)",
            "10 of 12 heads (a majority)", f"{c['count']} of {c['of']} heads with eigenvalue statistic > {c['threshold']}",
            verdict(c["count"] > c["of"] / 2), "circuits-copying"))
        rows = [r for t in a.get("skip_trigrams", []) for r in t["rows"]]
        copying = sum(r["source"] in r["outs"] for r in rows)
        claims.append(Claim(
            PAPER, "One-layer heads implement skip-trigrams [source] … [destination] → [out], many of them copying "
            "(out = source)", "skip-trigram tables in which the source often predicts itself",
            f"{copying} of {len(rows)} top source tokens have themselves among their 5 top outs "
            f"({len(a.get('skip_trigram_bugs', []))} skip-trigram 'bugs' found in the corpus)",
            verdict(len(rows) > 0 and copying > 0), "circuits-skip-trigrams"))
    if "attn2" in analyses and "composition" in analyses["attn2"]:
        a = analyses["attn2"]
        comp = a["composition"]
        best_ind = max(a["heads"], key=lambda h: h["induction"])
        best_prev = max((h for h in a["heads"] if h["head"].startswith("0.")), key=lambda h: h["previous_token"])
        top_k = comp["k"][0] if comp["k"] else None
        mech = next((m for m in a.get("induction_mechanism", []) if m["head"] == best_ind["head"]), None)
        share = mech["k_composition_share"] if mech and mech.get("k_composes_with") == best_prev["head"] else None
        # the pair must be the right one, and stand out: above the random baseline, or carrying most of the
        # induction head's score margin on the target
        pair = top_k is not None and top_k["from"] == best_prev["head"] and top_k["to"] == best_ind["head"]
        ok = pair and (top_k["score"] > comp["random_baseline"] or (share is not None and share > 0.5))
        claims.append(Claim(
            PAPER, "Two-layer models form induction heads by K-composition with a previous-token head",
            "the strongest K-composition pair is previous-token head → induction head, and it stands out",
            f"strongest K-composition {top_k['from']} → {top_k['to']} ({top_k['score']:.3f}; random baseline "
            f"{comp['random_baseline']:.3f}); best previous-token head {best_prev['head']} "
            f"({best_prev['previous_token']:.2f}), best induction head {best_ind['head']} ({best_ind['induction']:.2f})"
            + (f"; {100 * share:.0f}% of {best_ind['head']}'s score margin on the target comes through "
               f"{best_prev['head']}'s output" if share is not None else "")
            if top_k else "no composition scores", verdict(ok), "circuits-composition"))
        t = a["term_importance"]
        if len(t["improvement"]) >= 3:
            d, h, v = t["improvement"][:3]
            claims.append(Claim(
                PAPER, "Term importance in a two-layer model: the direct path and individual heads matter most, virtual "
                "heads (V-composition) little", "direct 1.8, individual heads 5.2, virtual heads 0.3 nats (paper's model)",
                f"direct {d:.2f}, individual heads {h:.2f}, virtual heads {v:.2f} nats (frozen patterns, "
                f"{t['n_tokens']:,} held-out tokens)", verdict(v < h and v < d), "circuits-terms"))
    return claims

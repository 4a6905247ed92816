"""The Framework experiment's report section: bigrams, copying heads, skip-trigrams, composition, head roles and
term importance, from each model's analysis (JSON form, as the report reads it from disk)."""

from __future__ import annotations

import json

from circuitlab.report.figures import esc, fig
from circuitlab.report.page import Page, table, tok


def bigram_figure(analyses: dict[str, dict]) -> dict:
    names = [n for n in analyses if "bigram_agreement" in analyses[n]]
    data = [{"type": "bar", "name": label, "x": names, "y": [analyses[n]["bigram_agreement"][k] for n in names]}
            for k, label in (("correlation", "correlation r"), ("top1", "top-1 agreement"), ("top5", "top-5 agreement"))]
    return fig(data, "Direct path W_E W_U against corpus bigram statistics", "model", "agreement",
               yaxis={"range": [0, 1]})


def copying_histogram(analyses: dict[str, dict]) -> dict:
    data = []
    for n, a in analyses.items():
        if not a.get("copying_heads"):
            continue
        h = a["copying_heads"]["ov_histogram"]
        mids = [(a_ + b) / 2 for a_, b in zip(h["edges"][:-1], h["edges"][1:])]
        data.append({"type": "bar", "name": f"{n} OV", "x": mids, "y": h["counts"], "width": 0.18})
    return fig(data, "Copying statistic Σλ/Σ|λ| of each head's OV circuit (eigenvalues)", "eigenvalue statistic",
               "heads", barmode="group")


def composition_figures(a: dict) -> list[dict]:
    out = []
    comp = a.get("composition")
    if not comp:
        return out
    for kind in ("q", "k", "v"):
        m = comp.get(f"{kind}_matrix")
        if not m:
            continue
        # m[l_from][h_from][l_to][h_to]; show layer 0 -> layer 1
        z = [[m[0][h_from][1][h_to] for h_to in range(len(m[0][h_from][1]))] for h_from in range(len(m[0]))]
        out.append(fig([{"type": "heatmap", "z": z, "x": [f"1.{h}" for h in range(len(z[0]))],
                         "y": [f"0.{h}" for h in range(len(z))], "colorscale": "Blues"}],
                       f"{kind.upper()}-composition (raw): layer-0 head (rows) → layer-1 head (columns); random baseline "
                       f"{comp['random_baseline']:.3f}", "layer-1 head", "layer-0 head", height=300))
    return out


def term_importance_figure(analyses: dict[str, dict]) -> dict:
    labels = ["direct path", "individual heads", "virtual heads (order 2)", "order 3"]
    data = []
    for n, a in analyses.items():
        t = a.get("term_importance")
        if t:
            data.append({"type": "bar", "name": n, "x": labels[: len(t["improvement"])], "y": t["improvement"]})
    return fig(data, "Term importance: loss improvement of each order of path terms (nats, frozen patterns)",
               "terms", "nats", barmode="group")


def framework_sections(page: Page, an: dict[str, dict]) -> None:
    """The Framework sections, from each model's analysis in its JSON form ({'attn0': ..., 'attn1': ...})."""
    if not an:
        return
    b_rows = []
    for n, a in an.items():
        for s in a["bigram_agreement"]["strongest"][:8]:
            b_rows.append([esc(n), tok(s["prev"]), tok(s["next"]), f"{s['model_prob']:.3f}", f"{s['corpus_prob']:.3f}",
                           f"{s['corpus_count']:,}"])
    page.section("circuits-bigram", "Zero-layer: the bigram table W_E W_U",
                 page.plot("bigram", bigram_figure(an)) +
                 table(["model", "previous token", "next token", "model P", "corpus P", "corpus count"], b_rows[:16]),
                 "Direct path W_E W_U of each model against the corpus's bigram statistics (previous tokens seen ≥ 100 "
                 "times in the training split).")
    page.section("circuits-copying", "One layer: copying heads",
                 page.plot("copying_hist", copying_histogram({n: a for n, a in an.items() if n != "attn0"})),
                 "Eigenvalue statistic Σλ/Σ|λ| of each head's OV circuit W_E W_V W_O W_U: near +1 = copying.")
    if "attn1" in an and an["attn1"].get("skip_trigrams"):
        blocks = []
        for t in an["attn1"]["skip_trigrams"][:4]:
            rows = [[tok(r["source"]), " ".join(tok(d) for d in r["destinations"]), " ".join(tok(o) for o in r["outs"])]
                    for r in t["rows"][:8]]
            blocks.append(f"<h3>head {esc(t['head'])}</h3>" + table(["[source]", "… [destinations]", "→ [outs]"], rows))
        bugs = an["attn1"].get("skip_trigram_bugs", [])
        bug_text = "".join(f"<li>{esc(json.dumps(b, ensure_ascii=False))}</li>" for b in bugs[:6])
        page.section("circuits-skip-trigrams", "One layer: skip-trigrams [source] … [destination] → [out]",
                     '<div class="grid">' + "".join(f"<div>{b}</div>" for b in blocks) + "</div>" +
                     (f"<h3>Skip-trigram bugs found in the corpus</h3><ul>{bug_text}</ul>" if bugs else ""),
                     "Read from the weights: the QK circuit on tokens picks destinations for a source; the OV circuit "
                     "picks the outs it raises (top 5 each, centred circuits).")
    two = next((an[n] for n in ("attn2", "attn3", "attn8") if n in an and an[n].get("composition")), None)
    if two:
        page.section("circuits-composition", "Two layers: composition and induction heads",
                     '<div class="grid3">' + "".join(page.plot(f"comp_{i}", f) for i, f in
                                                     enumerate(composition_figures(two))) + "</div>",
                     "Composition score ‖W_A W_B‖ / (‖W_A‖ ‖W_B‖) of each layer-0 head's OV circuit into each layer-1 "
                     "head's Q, K or V input.")
    rows = []
    for n, a in an.items():
        for h in a.get("heads", []):
            rows.append([esc(n), esc(h["head"]), f"{h['ov_copying']:.2f}", f"{h['previous_token']:.2f}",
                         f"{h['induction']:.2f}", f"{h['prefix_matching']:.2f}", esc(h.get("attention_driver") or ""),
                         esc(", ".join(h["roles"]) or "–")])
    if rows:
        page.section("circuits-heads", "Head roles", table(
            ["model", "head", "OV copying", "previous-token", "induction", "prefix-matching", "attention driven by",
             "roles"], rows))
    page.section("circuits-terms", "Term importance", page.plot("terms", term_importance_figure(an)),
                 "Loss improvement from each order of the path expansion with attention patterns frozen: order 0 = "
                 "direct path, 1 = individual heads, 2 = virtual heads.")

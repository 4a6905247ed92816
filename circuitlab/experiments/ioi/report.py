"""The IOI experiment's report section: the logit difference distribution, a heat map per path-patching step,
the circuit as head classes per layer, the name movers' attention to IO vs S, and the circuit evaluation, from
the results in their JSON form."""

from __future__ import annotations

from circuitlab.report.figures import esc, fig, label
from circuitlab.report.page import Page, table

COLORS = {"name mover": "#2ca02c", "negative name mover": "#d62728", "backup name mover": "#bcbd22", "S-inhibition": "#9467bd",
          "induction": "#1f77b4", "duplicate-token": "#ff7f0e", "previous-token": "#8c564b", "other": "#7f7f7f"}


def _head(h) -> tuple[int, int]:
    """A head as results.json writes it ("L.H")."""
    layer, head = str(h).split(".")
    return int(layer), int(head)


def _grid(values: list[float], shape: list[int]) -> list[list[float]]:
    L, H = shape
    return [values[layer * H : (layer + 1) * H] for layer in range(L)]


def ioi_figures(r: dict) -> dict[str, dict]:
    b = r["behaviour"]
    figs = {"logit_diff": fig([{"type": "histogram", "x": b["per_prompt"], "nbinsx": 30, "name": "prompts"}],
                              f"logit(IO) − logit(S) per prompt (mean {b['logit_diff']:.2f}; p_ABC "
                              f"{b['corrupted_logit_diff']:.2f})", "logit difference", "prompts", height=320)}
    for i, step in enumerate(r["steps"]):
        ex = step["exact"]
        if ex["method"].startswith("not run"):
            continue
        L, H = ex["shape"]
        z = [[None] * H for _ in range(L)]
        for h, e in step["effect"].items():
            layer, head = _head(h)
            z[layer][head] = 100 * e
        sc = step["screen"]
        est = [[100 * (v - sc["clean"]) / (abs(sc["clean"]) or 1.0) for v in row] for row in _grid(sc["values"], sc["shape"])]
        into = "the logits" if not step["receivers"] else (
            f"{step['site']} of {', '.join(map(str, step['receivers']))} at {step['position']}")
        figs[f"step{i}"] = fig([{"type": "heatmap", "z": est, "colorscale": "RdBu", "zmid": 0, "showscale": False,
                                 "opacity": 0.35, "name": "screen", "hovertemplate": "screen %{z:.1f}%<extra>%{y}.%{x}</extra>"},
                                {"type": "heatmap", "z": z, "colorscale": "RdBu", "zmid": 0, "name": "exact",
                                 "colorbar": {"title": "% change"},
                                 "hovertemplate": "exact %{z:.1f}%<extra>layer %{y} head %{x}</extra>"}],
                               f"Step {i + 1}: senders into {label(into)} (exact: solid; screen: faint)", "head", "layer",
                               height=max(260, 14 * L + 120), yaxis={"autorange": "reversed"})
    classes = r["classes"]
    L, H = r["steps"][0]["screen"]["shape"]
    figs["circuit"] = fig([{"type": "scatter", "mode": "markers+text", "name": label(c),
                            "x": [_head(h)[1] for h in heads], "y": [_head(h)[0] for h in heads],
                            "text": [label(h) for h in heads], "textposition": "top center",
                            "marker": {"size": 14, "color": COLORS.get(c)}}
                           for c, heads in classes.items() if heads],
                          "The circuit: head classes per layer", "head", "layer", height=max(320, 14 * L + 140),
                          yaxis={"range": [L - 0.5, -0.5], "dtick": 1 if L <= 12 else 5},
                          xaxis={"range": [-0.5, H - 0.5], "dtick": 1})
    att = r["attention"]
    movers = classes.get("name mover", []) + classes.get("negative name mover", [])
    names = [label(h) for h in movers]
    if movers:
        figs["movers"] = fig([{"type": "bar", "name": label(k), "x": names,
                               "y": [att[k][_head(h)[0]][_head(h)[1]] for h in movers]}
                              for k in ("END->IO", "END->S1", "END->S2")],
                             "Name movers' attention from END", "head", "attention", height=320, barmode="group",
                             xaxis={"type": "category"})
    return figs


def ioi_sections(page: Page, r: dict) -> None:
    f = ioi_figures(r)
    b, v = r["behaviour"], r["vocabulary"]
    about = "; ".join(esc(a) for a in r.get("about", []))
    page.section("ioi-behaviour", "Indirect object identification: the behaviour",
                 '<div class="grid">' + page.plot("i_ld", f["logit_diff"]) + "</div>",
                 f"Model <b>{esc(r['model'])}</b> ({about}). {esc(b['n'])} prompts from the paper's 15 templates in "
                 f"both orders; {esc(v['names'])} names, {esc(v['places'])} places and {esc(v['objects'])} objects are "
                 f"single tokens (dropped: {esc(v['dropped'])}). Example: “{esc(v['example'])}”. IO > S on "
                 f"{100 * b['io_above_s']:.1f}%, IO probability {100 * b['io_probability']:.1f}%.")
    steps = "".join(page.plot(f"i_step{i}", f[f"step{i}"]) for i in range(len(r["steps"])) if f"step{i}" in f)
    skipped = [s["name"] + ": " + s["exact"]["method"] for s in r["steps"] if s["exact"]["method"].startswith("not run")]
    rows = [[esc(c), esc(", ".join(map(str, heads)) or "—")] for c, heads in r["classes"].items()]
    page.section("ioi-circuit", "The IOI circuit by path patching",
                 '<div class="grid">' + steps + (page.plot("i_circuit", f["circuit"]) if any(r["classes"].values())
                                                 else "") + (page.plot("i_movers", f["movers"]) if "movers" in f else "")
                 + "</div>" + table(["class", "heads"], rows),
                 "Path patching backwards from the logits (p_IOI → p_ABC): each step's heat map is the % change in the "
                 "logit difference when a sender's path into the receivers is patched; solid cells are exact, faint "
                 "ones a first-order screen of every head." + (" Not run: " + esc("; ".join(skipped)) if skipped else ""))
    ev = r["evaluation"]
    rows = [["F(M), the model", *[f"{ev['F_M']:.2f}"] * 3],
            ["F(C), the circuit", *(f"{ev['F_C'].get(k, 0):.2f}" for k in ("mean", "resample", "zero"))],
            [f"F of {len(ev['random_heads'])} random heads", *(f"{ev['F_random'].get(k, 0):.2f}"
                                                               for k in ("mean", "resample", "zero"))]]
    inc = [[esc(x["how"]), esc(", ".join(map(str, x["K"]))),
            f"{abs(x['F_C_without_K'] - x['F_M_without_K']):.2f}"] for x in ev["incompleteness"]]
    page.section("ioi-evaluation", "Faithfulness, completeness, minimality",
                 table(["", "mean ablation (p_ABC, per template)", "resample", "zero"], rows)
                 + table(["K", "heads", "incompleteness |F(C∖K) − F(M∖K)|"], inc)
                 + table(["head", "minimality (largest over K)"],
                         [[esc(h), f"{s:.3f}"] for h, s in sorted(ev["minimality"].items())]),
                 "Every head outside the set is knocked out; the ablation kinds compare how faithfulness depends on "
                 "what a knocked-out head is replaced with.")

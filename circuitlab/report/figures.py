"""Plotly figure specs (plain dicts: {"data": [...], "layout": {...}}) for the report, built from the experiments'
results JSON. Every string that can come from a corpus goes through `esc` (Plotly renders its own pseudo-HTML in
labels; escaped entities show as text)."""

from __future__ import annotations

import html

import numpy as np

ATTENTION = [[0, "#ffffff"], [1, "#08306b"]]  # white (no attention) to dark blue
COLOURS = {"1L": "#1f77b4", "2L": "#d62728", "3L": "#9467bd", "1L-smeared": "#17becf", "2L-smeared": "#ff7f0e"}


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def fig(data: list, title: str, x: str = "", y: str = "", **layout) -> dict:
    base = {"title": {"text": title, "font": {"size": 14}}, "xaxis": {"title": {"text": x}},
            "yaxis": {"title": {"text": y}}, "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 340,
            "legend": {"orientation": "h", "y": -0.25}}
    for k, v in layout.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return {"data": data, "layout": base}


def window_shapes(windows: list[tuple[int | None, int | None, str]]) -> list[dict]:
    return [{"type": "rect", "xref": "x", "yref": "paper", "x0": a, "x1": b, "y0": 0, "y1": 1, "fillcolor": c,
             "opacity": 0.15, "line": {"width": 0}} for a, b, c in windows if a is not None and b is not None]


def vlines(xs: dict[str, float | None]) -> tuple[list[dict], list[dict]]:
    shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
               "line": {"dash": "dot", "width": 1, "color": "#555"}} for x in xs.values() if x is not None]
    notes = [{"x": x, "y": 1, "xref": "x", "yref": "paper", "text": esc(k), "showarrow": False, "yanchor": "bottom",
              "font": {"size": 10}} for k, x in xs.items() if x is not None]
    return shapes, notes


# ---------------------------------------------------------------- circuits


def bigram_figure(analyses: dict[str, dict]) -> dict:
    names = [n for n in analyses if "bigram_agreement" in analyses[n]]
    data = [{"type": "bar", "name": label, "x": names, "y": [analyses[n]["bigram_agreement"][k] for n in names]}
            for k, label in (("correlation", "correlation r"), ("top1", "top-1 agreement"), ("top5", "top-5 agreement"))]
    return fig(data, "Direct path W_E W_U against corpus bigram statistics", "model", "agreement",
               yaxis={"range": [0, 1]})


def copying_histogram(analyses: dict[str, dict]) -> dict:
    data = []
    for n, a in analyses.items():
        if "copying_heads" not in a:
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
                       f"{kind.upper()}-composition: layer-0 head (rows) → layer-1 head (columns); random baseline "
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


# ---------------------------------------------------------------- induction


def _curve(r: dict, name: str, key: str) -> dict:
    c = r["models"][name]["curve"]
    pts = [(p["tokens"], p.get(key)) for p in c if p["tokens"] > 0 and p.get(key) is not None]
    return {"type": "scatter", "mode": "lines", "name": name, "x": [p[0] for p in pts], "y": [p[1] for p in pts],
            "line": {"color": COLOURS.get(name), "width": 2 if name == "2L" else 1.3}}


def _phase_shapes(r: dict) -> list[dict]:
    w = r["models"]["2L"]["windows"]["induction"]
    return window_shapes([(w["start"], w["end"], "#d62728")])


def induction_figures(r: dict) -> dict[str, dict]:
    names = list(r["models"])
    ip = r["icl_positions"]
    shapes = _phase_shapes(r)
    logx = {"type": "log", "title": {"text": "tokens seen"}}
    figs = {
        "icl": fig([_curve(r, n, "icl") for n in names],
                   f"ICL score = loss(token {ip['late']}) − loss(token {ip['early']}); 2L phase-change window shaded",
                   "", "nats", xaxis=logx, shapes=shapes),
        "induction_score": fig([_curve(r, n, "best_induction") for n in names],
                               "Best induction score (attention to the token after the earlier copy, 2 × 50 random tokens)",
                               "", "attention", xaxis=logx, shapes=shapes),
        "prefix": fig([_curve(r, n, "best_prefix_matching") for n in names],
                      "Best prefix-matching score (25 random tokens × 4)", "", "attention", xaxis=logx, shapes=shapes),
        "loss": fig([_curve(r, n, "heldout_loss") for n in names], "Held-out loss (loss bump: 2L departs from 1L)",
                    "", "nats", xaxis=logx, yaxis={"type": "log"},
                    shapes=shapes + window_shapes([(r["loss_bump"]["start"], r["loss_bump"]["end"], "#2ca02c")])),
        "repeat": fig([_curve(r, n, "repeat_second_half_loss") for n in names],
                      "Loss on the second half of repeated random tokens", "", "nats", xaxis=logx, shapes=shapes),
    }
    lbp = r["loss_by_position"]
    data = []
    for model, curves in lbp["curves"].items():
        for moment, ys in curves.items():
            if ys is None:
                continue
            t = lbp["moments"][moment]
            data.append({"type": "scatter", "mode": "lines", "name": f"{model} {moment} ({t / 1e6:.1f}M tokens)",
                         "x": list(range(2, len(ys) + 2)), "y": ys,
                         "line": {"color": COLOURS.get(model), "dash": "solid" if moment == "final" else "dot"}})
    figs["by_position"] = fig(data, "Loss by token position (later tokens are easier once induction heads form)",
                              "token index in the context", "nats", xaxis={"type": "log"})
    pca = r["pca"]
    tr = np.asarray(pca["trajectory"])
    toks = pca["tokens"]
    figs["pca"] = fig([
        {"type": "scatter", "mode": "lines+markers", "x": tr[:, 0].tolist(), "y": tr[:, 1].tolist(), "name": "2L",
         "text": [f"{t / 1e6:.2f}M tokens" for t in toks], "marker": {"color": np.log10(np.maximum(toks, 1)).tolist(),
                                                                        "colorscale": "Viridis", "size": 6}},
        {"type": "scatter", "mode": "markers", "x": [tr[pca["pivot_index"], 0]], "y": [tr[pca["pivot_index"], 1]],
         "name": f"pivot ({pca['pivot_tokens'] / 1e6:.1f}M tokens)", "marker": {"size": 14, "symbol": "x",
                                                                               "color": "#d62728"}}],
        f"Per-token-loss PCA over checkpoints ({pca['examples']} held-out examples, one token each)", "PC1", "PC2")
    ab = r["ablation"]
    if ab["over_training"]:
        rows = ab["over_training"]
        heads = [f"{l}.{h}" for l in range(len(rows[0]["per_head"])) for h in range(len(rows[0]["per_head"][0]))]
        z = [[-x for layer in row["per_head"] for x in layer] for row in rows]
        figs["ablation"] = fig([{"type": "heatmap", "z": z, "x": heads, "y": [f"{row['tokens'] / 1e6:.1f}M" for row in rows],
                                 "colorscale": "RdBu", "zmid": 0, "colorbar": {"title": {"text": "ICL lost"}}}],
                               "Pattern-preserving ablation over training: ICL score lost when each head is removed "
                               "(nats; negative = ablation raises ICL)", "head", "tokens seen", height=320)
        figs["ablation_share"] = fig([{"type": "scatter", "mode": "lines+markers", "x": [row["tokens"] for row in rows],
                                       "y": [row["group_share"] for row in rows], "name": "share"}],
                                     f"Share of the ICL score carried by the induction heads "
                                     f"({esc(', '.join(ab['group']) or 'none')}), pattern-preserving",
                                     "", "share", xaxis=logx, yaxis={"range": [-0.2, 1.2]})
    beh = r["behaviours"]
    c = beh.get("copying")
    if c and "skipped" not in c:
        toks = c["tokens"][1:]
        figs["copying"] = fig([{"type": "bar", "x": list(range(1, len(toks) + 1)), "y": c["per_token_loss"],
                                "text": [esc(t) for t in toks], "textposition": "none", "hovertemplate": "%{text}: %{y:.2f} nats<extra></extra>"}],
                              f"Per-token loss on the rare-identifier passage (identifier occurrences at "
                              f"{c['occurrences']}); hover for tokens", "predicted token position", "nats")
    for key, title in (("translation", "Fuzzy-induction head on the translation task"),
                       ("pattern", "Best head on the pattern-matching task")):
        b = beh.get(key)
        if b:
            labels = [f"{i}:{esc(t)}" for i, t in enumerate(b["tokens"])]
            figs[key] = fig([{"type": "heatmap", "z": b["pattern"], "x": labels, "y": labels, "colorscale": ATTENTION}],
                            f"{title}: head {b['best_head']} (query rows, key columns)", "key", "query", height=460,
                            yaxis={"autorange": "reversed"})
    return figs


# ---------------------------------------------------------------- grokking


def grokking_figures(g: dict) -> dict[str, dict]:
    ph = g.get("phases", {})
    marks = {"memorised": ph.get("memorised"), "cleanup starts": ph.get("cleanup"), "grokked": ph.get("grokked")}
    shapes, notes = vlines(marks)
    cv = g["curves"]
    pm = g["progress_measures"]
    ep = [p["epoch"] for p in pm]
    line = lambda x, y, name: {"type": "scatter", "mode": "lines", "x": x, "y": y, "name": name}  # noqa: E731
    figs = {
        "loss": fig([line(cv["epoch"], cv["train_loss"], "train"), line(cv["epoch"], cv["test_loss"], "test")],
                    "Train and test loss (phase boundaries dotted)", "epoch", "loss", yaxis={"type": "log"},
                    shapes=shapes, annotations=notes),
        "accuracy": fig([line(cv["epoch"], cv["train_acc"], "train"), line(cv["epoch"], cv["test_acc"], "test")],
                        "Train and test accuracy", "epoch", "accuracy", shapes=shapes, annotations=notes),
        "restricted": fig([line(ep, [p["restricted_loss"] for p in pm], "restricted loss"),
                           line(ep, [p["excluded_loss"] for p in pm], "excluded loss (train)"),
                           line(ep, [p["test_loss"] for p in pm], "test loss")],
                          "Restricted and excluded loss (key frequencies only / all but them)", "epoch", "loss",
                          yaxis={"type": "log"}, shapes=shapes, annotations=notes),
        "gini": fig([line(ep, [p["gini_W_E"] for p in pm], "Gini of W_E's Fourier norms"),
                     line(ep, [p["gini_W_L"] for p in pm], "Gini of W_L's Fourier norms")],
                    "Fourier sparsity (Gini coefficient)", "epoch", "Gini", shapes=shapes, annotations=notes),
        "norm": fig([line(ep, [p["weight_norm"] for p in pm], "sum of squared weights")], "Total weight norm", "epoch",
                    "Σ w²", shapes=shapes, annotations=notes),
    }
    fn = g["fourier_norms"]
    figs["fourier"] = fig([{"type": "bar", "x": fn["names"], "y": fn["W_E"], "name": "W_E"}],
                          f"Norm of W_E along each Fourier component (key frequencies {g['key_frequencies']})",
                          "Fourier component", "norm", height=320)
    clusters = g.get("neuron_clusters", {})
    figs["neurons"] = fig([{"type": "bar", "x": [f"freq {k}" for k in clusters], "y": list(clusters.values())}],
                          f"Neurons by their dominant frequency ({g['neurons_alive']} active neurons; "
                          f"{100 * g['share_of_neurons_explained_by_one_frequency']:.0f}% > 85% explained by one)",
                          "frequency", "neurons", height=300)
    return figs

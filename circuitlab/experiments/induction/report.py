"""The induction experiment's report section: the phase change, controls, loss by position, PCA, ablations and
behaviours, from the results in their JSON form (as the report reads them from disk)."""

from __future__ import annotations

import numpy as np

from circuitlab.experiments.induction.claims import window_text
from circuitlab.induction.phase import Window
from circuitlab.report.figures import ATTENTION, band, esc, fig, label, window_shapes
from circuitlab.report.page import Page, table

COLOURS = {"1L": "#1f77b4", "2L": "#d62728", "3L": "#9467bd", "1L-smeared": "#17becf", "2L-smeared": "#ff7f0e"}


def _window(w: dict) -> str:
    return window_text(Window.from_json(w))


def _points(r: dict, name: str, key: str) -> tuple[list, list]:
    pts = [(p["tokens"], p.get(key)) for p in r["models"][name]["curve"] if p["tokens"] > 0 and p.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _curve(r: dict, name: str, key: str) -> dict:
    x, y = _points(r, name, key)
    return {"type": "scatter", "mode": "lines", "name": label(name), "x": x, "y": y,
            "line": {"color": COLOURS.get(name), "width": 2 if name == "2L" else 1.3}}


def _curves(r: dict, names: list[str], key: str, seeds: list[dict]) -> list[dict]:
    """Seed 0's curve of each model, over the min-max band of every seed (`seeds`: the other seeds' results)."""
    out = []
    for n in names:
        out += band([_points(s, n, key) for s in [r, *seeds] if n in s["models"]], n, COLOURS.get(n))
        out.append(_curve(r, n, key))
    return out


def _phase_shapes(r: dict) -> list[dict]:
    w = r["models"]["2L"]["windows"]["induction"]
    return window_shapes([(w["start"], w["end"], "#d62728")])


def induction_figures(r: dict, seeds: list[dict] = ()) -> dict[str, dict]:
    """The section's figures from seed 0's results `r`; `seeds`: the other seeds' results, drawn as bands."""
    names = list(r["models"])
    seeds = list(seeds)
    ip = r["icl_positions"]
    shapes = _phase_shapes(r)
    logx = {"type": "log", "title": {"text": "tokens seen"}}
    figs = {
        "icl": fig(_curves(r, names, "icl", seeds),
                   f"ICL score = loss(token {label(ip['late'])}) − loss(token {label(ip['early'])}); 2L phase-change "
                   "window shaded",
                   "", "nats", xaxis=logx, shapes=shapes),
        "induction_score": fig(_curves(r, names, "best_induction", seeds),
                               "Best induction score (attention to the token after the earlier copy, 2 × 50 random tokens)",
                               "", "attention", xaxis=logx, shapes=shapes),
        "prefix": fig([_curve(r, n, "best_prefix_matching") for n in names],
                      "Best prefix-matching score (25 random tokens × 4)", "", "attention", xaxis=logx, shapes=shapes),
        "loss": fig([_curve(r, n, "heldout_loss") for n in names], "Held-out loss", "", "nats", xaxis=logx,
                    yaxis={"type": "log"}, shapes=shapes),
        "train_loss": fig([{"type": "scatter", "mode": "lines", "name": label(n), "x": [p["tokens"] for p in r["models"][n]["train_loss"]],
                            "y": [p["train_loss"] for p in r["models"][n]["train_loss"]],
                            "line": {"color": COLOURS.get(n)}} for n in ("1L", "2L") if n in r["models"]],
                          "Training loss, 1L and 2L (the loss bump, where found, shaded green)", "", "nats",
                          xaxis=logx, yaxis={"type": "log"},
                          shapes=shapes + (window_shapes([(r["loss_bump"]["window"]["start"],
                                                           r["loss_bump"]["window"]["end"], "#2ca02c")])
                                           if r["loss_bump"]["found"] else [])),
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
            data.append({"type": "scatter", "mode": "lines", "name": label(f"{model} {moment} ({t / 1e6:.1f}M tokens)"),
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
        f"Per-token-loss PCA over checkpoints ({label(pca['examples'])} held-out examples, one token each)", "PC1", "PC2")
    ab = r["ablation"]
    if ab["over_training"]:
        rows = ab["over_training"]
        heads = [f"{l}.{h}" for l in range(len(rows[0]["per_head"])) for h in range(len(rows[0]["per_head"][0]))]
        z = [[x for layer in row["per_head"] for x in layer] for row in rows]  # > 0: the head carried ICL
        figs["ablation"] = fig([{"type": "heatmap", "z": z, "x": heads, "y": [f"{row['tokens'] / 1e6:.1f}M" for row in rows],
                                 "colorscale": "RdBu", "zmid": 0, "colorbar": {"title": {"text": "ICL lost"}}}],
                               "Pattern-preserving ablation over training: ICL score lost when each head is removed "
                               "(nats; negative = ablation raises ICL)", "head", "tokens seen", height=320)
        figs["ablation_share"] = fig([{"type": "scatter", "mode": "lines+markers", "x": [row["tokens"] for row in rows],
                                       "y": [row["group_share"] for row in rows], "name": "share"}],
                                     f"Share of the ICL score carried by the induction heads "
                                     f"({label(', '.join(ab['group']) or 'none')}), pattern-preserving",
                                     "", "share", xaxis=logx, yaxis={"range": [-0.2, 1.2]})
    beh = r["behaviours"]
    c = beh.get("copying")
    if c:
        toks = c["tokens"][1:]
        figs["copying"] = fig([{"type": "bar", "x": list(range(1, len(toks) + 1)), "y": c["per_token_loss"],
                                "text": [label(t) for t in toks], "textposition": "none", "hovertemplate": "%{text}: %{y:.2f} nats<extra></extra>"}],
                              f"Per-token loss on the rare-identifier passage (identifier occurrences at "
                              f"{label(c['occurrences'])}); hover for tokens", "predicted token position", "nats")
    for key, title in (("translation", "Fuzzy-induction head on the translation task"),
                       ("pattern", "Best head on the pattern-matching task")):
        b = beh.get(key)
        if b:
            labels = [f"{i}:{label(t)}" for i, t in enumerate(b["tokens"])]
            figs[key] = fig([{"type": "heatmap", "z": b["pattern"], "x": labels, "y": labels, "colorscale": ATTENTION}],
                            f"{title}: head {label(b['best_head'])} (query rows, key columns)", "key", "query", height=460,
                            yaxis={"autorange": "reversed"})
    return figs


def induction_sections(page: Page, r: dict, seeds: list[dict] = ()) -> None:
    f = induction_figures(r, seeds)
    differs = "".join(f"<li>{esc(d)}</li>" for d in r["differs_from_paper"])
    models = r["models"]
    wrows = [[esc(n), esc(", ".join(m["induction_heads"]) or "none"), f"{m['curve'][-1]['icl']:.3f}",
              f"{(m['curve'][-1].get('best_induction') or 0):.3f}",
              esc(_window(m["windows"]["induction"])), esc(_window(m["windows"]["icl"]))] for n, m in models.items()]
    page.section("induction-phase", "The in-context-learning phase change",
                 f"<p>Preset <b>{esc(r['preset'])}</b>; differs from the paper:</p><ul>{differs}</ul>" +
                 table(["model", "induction heads", "final ICL", "final best induction", "induction window",
                        "ICL window"], wrows) +
                 '<div class="grid">' + page.plot("icl", f["icl"]) + page.plot("induction_score", f["induction_score"]) +
                 page.plot("loss", f["loss"]) + page.plot("train_loss", f["train_loss"]) +
                 page.plot("prefix", f["prefix"]) + "</div>",
                 esc(r["icl_positions"]["note"]) + ". Window: where the smoothed series makes 10%→90% of its change (abrupt: within 0.5 decades of tokens). "
                 "Loss bump (green, where found): the window, when the training-loss gap L_2L − L_1L falls at least twice "
                 "as fast there as around it.")
    page.section("induction-controls", "Controls: one layer, smeared keys",
                 page.plot("repeat", f["repeat"]),
                 "1L (no induction heads possible without composition), 1L and 2L with smeared keys "
                 "(k_j ← σ(α) k_j + (1 − σ(α)) k_{j−1}): curves overlaid in the plots above.")
    page.section("induction-position", "Loss by token position", page.plot("by_position", f["by_position"]))
    page.section("induction-pca", "Per-token-loss PCA", page.plot("pca", f["pca"]))
    page.section("induction-ablation", "Ablations", page.plot("ablation", f.get("ablation")) +
                 page.plot("ablation_share", f.get("ablation_share")),
                 "Each head's output zeroed with every attention pattern frozen (pattern-preserving), on held-out "
                 "windows.")
    b = r["behaviours"]
    parts = [page.plot("copying", f.get("copying"))]
    for key in ("translation", "pattern"):
        if b.get(key):
            parts.append(page.plot(key, f.get(key)))
    page.section("induction-behaviours", "Behaviours: copying, translation, pattern matching", "".join(parts))

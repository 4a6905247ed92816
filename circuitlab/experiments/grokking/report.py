"""The grokking experiment's report section: curves, progress measures, the Fourier algorithm and the frequency
ablations, from the results in their JSON form (as the report reads them from disk)."""

from __future__ import annotations

from circuitlab.report.figures import band, esc, fig, label, vlines
from circuitlab.report.page import Page, table


def grokking_figures(g: dict, seeds: list[dict] = ()) -> dict[str, dict]:
    """The section's figures from seed 0's results `g`; `seeds`: the other seeds' results, drawn as bands."""
    ph = g.get("phases", {})
    marks = {"memorised": ph.get("memorised"), "cleanup starts": ph.get("cleanup"), "grokked": ph.get("grokked")}
    shapes, notes = vlines(marks)
    cv = g["curves"]
    pm = g["progress_measures"]
    ep = [p["epoch"] for p in pm]
    def line(x, y, name, color=None):
        return {"type": "scatter", "mode": "lines", "x": x, "y": y, "name": name} | ({"line": {"color": color}} if color else {})

    figs = {
        "loss": fig([*band([(s["curves"]["epoch"], s["curves"]["test_loss"]) for s in [g, *seeds]], "test", "#ff7f0e"),
                     line(cv["epoch"], cv["train_loss"], "train", "#1f77b4"),
                     line(cv["epoch"], cv["test_loss"], "test", "#ff7f0e")],
                    "Train and test loss (phase boundaries dotted)", "epoch", "loss", yaxis={"type": "log"},
                    shapes=shapes, annotations=notes),
        "accuracy": fig([*band([(s["curves"]["epoch"], s["curves"]["test_acc"]) for s in [g, *seeds]], "test",
                              "#ff7f0e"),
                         line(cv["epoch"], cv["train_acc"], "train", "#1f77b4"),
                         line(cv["epoch"], cv["test_acc"], "test", "#ff7f0e")],
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
    figs["fourier"] = fig([{"type": "bar", "x": [label(n) for n in fn["names"]], "y": fn["W_E"], "name": "W_E"}],
                          f"Norm of W_E along each Fourier component (key frequencies {label(g['key_frequencies'])})",
                          "Fourier component", "norm", height=320)
    clusters = g.get("neuron_clusters", {})
    figs["neurons"] = fig([{"type": "bar", "x": [f"freq {label(k)}" for k in clusters], "y": list(clusters.values())}],
                          f"Neurons by their dominant frequency ({label(g['neurons_alive'])} active neurons; "
                          f"{100 * g['share_of_neurons_explained_by_one_frequency']:.0f}% > 85% explained by one)",
                          "frequency", "neurons", height=300)
    return figs


def grokking_sections(page: Page, g: dict, seeds: list[dict] = ()) -> None:
    f = grokking_figures(g, seeds)
    ph = g.get("phases", {})
    intro = (f"Modular addition mod {esc(g['p'])}, preset {esc(g['preset'])}; phases (epochs): "
             + esc(", ".join(f"{k} {v}" for k, v in ph.items() if not k.endswith("_fall"))))
    page.section("grokking-curves", "Grokking: loss and accuracy",
                 '<div class="grid">' + page.plot("g_loss", f["loss"]) + page.plot("g_acc", f["accuracy"]) + "</div>",
                 intro)
    page.section("grokking-measures", "Progress measures",
                 '<div class="grid">' + page.plot("g_restricted", f["restricted"]) + page.plot("g_gini", f["gini"]) +
                 page.plot("g_norm", f["norm"]) + "</div>")
    page.section("grokking-fourier", "The Fourier algorithm",
                 '<div class="grid">' + page.plot("g_fourier", f["fourier"]) + page.plot("g_neurons", f["neurons"]) +
                 "</div>")
    ab = g["ablation"]
    page.section("grokking-ablation", "Frequency ablations", table(
        ["test loss", "nats"],
        [["full model", f"{ab['full_loss']:.3g}"], ["key frequencies removed", f"{ab['without_key_frequencies']:.3g}"],
         ["only key frequencies kept", f"{ab['only_key_frequencies']:.3g}"], ["uniform", f"{ab['uniform_loss']:.3g}"]]))

"""The grokking experiment (Nanda et al. 2023): train with the paper's settings (or a labelled quick preset), find
the Fourier algorithm in the final model, track the progress measures over every checkpoint, detect the three
phases, run the frequency ablations, and write results JSON with claims and plot data."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from circuitlab.experiments.claims import Claim, verdict
from circuitlab.grokking.fourier import (
    embedding_fourier_norms, fourier_names, frequency_norms, key_frequencies_from_neurons, logit_fit,
    neuron_activations, neuron_frequency_fractions, readout_fourier_norms,
)
from circuitlab.grokking.measures import all_logits, detect_phases, frequency_ablation, progress_measures
from circuitlab.training.checkpoints import atomic_write_text
from circuitlab.training.grokking import GrokConfig, GrokRun, train_grokking

PAPER = "Nanda et al. 2023"
PAPER_KEY_FREQUENCIES = [14, 35, 41, 42, 52]
PAPER_PHASES = {"memorised": 1400, "cleanup": 9400, "grokked": 14000}

PRESETS: dict[str, dict] = {
    "paper": {},  # every value as in the paper
    # Same model, data and optimiser; fewer epochs (stops soon after grokking is usually complete for seed 0).
    "quick": {"epochs": 12_000},
}


def _at(series: list[dict], epoch: int | None, key: str):
    if epoch is None:
        return None
    return min(series, key=lambda r: abs(r["epoch"] - epoch))[key]


def analyze_grokking(run: GrokRun, max_points: int = 200) -> dict:
    """Everything the issue lists, from a finished (or partial) run."""
    cfg, p = run.config, run.config.p
    data = run.data()
    model = run.model()
    final_epoch = run.checkpoints[-1]
    acts = neuron_activations(model, p)
    fractions = neuron_frequency_fractions(acts, p)  # [d_mlp, (p-1)/2]
    best_frac, best_k = fractions.max(1)
    # neurons that barely fire carry no frequency: count only neurons with non-trivial variance
    alive = acts.reshape(p * p, -1).var(0) > 1e-4 * acts.reshape(p * p, -1).var(0).max()
    ks = key_frequencies_from_neurons(fractions[alive], threshold=0.85, min_neurons=max(1, int(0.01 * alive.sum())))
    clusters = {int(k): int(((best_k + 1 == k) & (best_frac > 0.85) & alive).sum()) for k in ks}
    explained = float(((best_frac > 0.85) & alive).sum() / alive.sum().clamp_min(1))
    alphas, fve = logit_fit(all_logits(model, p), p, ks)
    ablation = frequency_ablation(model, p, ks, rows=data.test)
    metrics = run.metrics
    phases = detect_phases(metrics)

    epochs = run.checkpoints
    stride = max(1, math.ceil(len(epochs) / max_points))
    chosen = sorted(set(epochs[::stride]) | {epochs[-1]})
    measures = []
    t0 = time.perf_counter()
    for e in chosen:
        measures.append(progress_measures(run.model(e), p, ks, data.train, data.test, epoch=e).to_json())
    measure_seconds = time.perf_counter() - t0

    we_norms = embedding_fourier_norms(model, p)
    wl_norms = readout_fourier_norms(model, p)
    result = {
        "config": cfg.to_dict(), "final_epoch": final_epoch, "n_train": len(data.train), "n_test": len(data.test),
        "final": metrics[-1] if metrics else None,
        "key_frequencies": ks, "neuron_clusters": clusters, "neurons_alive": int(alive.sum()),
        "share_of_neurons_explained_by_one_frequency": explained,
        "neuron_best_frequency": (best_k + 1).tolist(), "neuron_best_fraction": best_frac.tolist(),
        "logit_fit": {"alpha": alphas, "fraction_of_variance_explained": fve},
        "fourier_norms": {"names": fourier_names(p), "W_E": we_norms.tolist(), "W_L": wl_norms.tolist(),
                          "W_E_by_frequency": frequency_norms(we_norms).tolist(),
                          "W_L_by_frequency": frequency_norms(wl_norms).tolist()},
        "ablation": ablation.to_json(), "phases": phases.to_json(), "progress_measures": measures,
        "progress_measures_seconds": measure_seconds,
        "curves": {k: [r[k] for r in metrics] for k in ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")},
    }
    result["claims"] = [c.to_json() for c in grokking_claims(result)]
    return result


def grokking_claims(r: dict) -> list[Claim]:
    ph, ks, m = r["phases"], r["key_frequencies"], r["progress_measures"]
    final = r["final"] or {}
    claims = [Claim(PAPER, "The model groks: long after memorising the training set, it generalises",
                    "test accuracy > 99% (paper: ~14k epochs)",
                    f"test accuracy {final.get('test_acc', float('nan')):.1%} at epoch {r['final_epoch']}; "
                    f">= 99% from epoch {ph['grokked']}", verdict(ph["grokked"] is not None), "grokking-curves")]
    ordered = None not in (ph["memorised"], ph["cleanup"], ph["grokked"]) and \
        ph["memorised"] < ph["cleanup"] <= ph["grokked"]
    claims.append(Claim(PAPER, "Three phases: memorisation, circuit formation, cleanup",
                        "boundaries 1.4k / 9.4k / 14k epochs (seed 0)",
                        f"{ph['memorised']} / {ph['cleanup']} / {ph['grokked']} epochs (test loss peak; test loss leaves "
                        "its plateau; test acc >= 99%; running-median smoothed)", verdict(ordered), "grokking-measures"))
    claims.append(Claim(PAPER, "A handful of key frequencies (the model uses a sparse Fourier algorithm)",
                        f"{len(PAPER_KEY_FREQUENCIES)} frequencies, {PAPER_KEY_FREQUENCIES} for the paper's seed 0",
                        f"{len(ks)} frequencies {ks} (neurons > 85% explained by one frequency, clusters "
                        f"{r['neuron_clusters']})", verdict(2 <= len(ks) <= 8), "grokking-fourier"))
    claims.append(Claim(PAPER, "Most neurons are explained by a single frequency", "84.6% of neurons > 85% explained",
                        f"{r['share_of_neurons_explained_by_one_frequency']:.1%} of {r['neurons_alive']} active neurons",
                        verdict(r["share_of_neurons_explained_by_one_frequency"] >= 0.7), "grokking-fourier"))
    fve = r["logit_fit"]["fraction_of_variance_explained"]
    claims.append(Claim(PAPER, "Logits are approximately sum_k alpha_k cos(w_k (a + b - c))", "~95% of variance explained",
                        f"{fve:.1%} of the logits' variance (double-centred), all p^2 inputs", verdict(fve >= 0.85),
                        "grokking-fourier"))
    if m:
        first = lambda key, thr: next((x["epoch"] for x in m if x[key] < thr), None)  # noqa: E731
        r_e, t_e = first("restricted_loss", 1.0), first("test_loss", 1.0)
        claims.append(Claim(PAPER, "Restricted loss falls before test loss", "restricted loss drops first",
                            f"first below 1 nat: restricted loss at epoch {r_e}, test loss at epoch {t_e}",
                            verdict(r_e is not None and (t_e is None or r_e <= t_e)), "grokking-measures"))
        if ph["memorised"] is not None and ph["cleanup"] is not None:
            ex0, ex1 = _at(m, ph["memorised"], "excluded_loss"), _at(m, ph["cleanup"], "excluded_loss")
            claims.append(Claim(PAPER, "Excluded loss rises during circuit formation", "rises from memorisation to cleanup",
                                f"{ex0:.2f} -> {ex1:.2f} nats (training set)", verdict(ex1 > ex0), "grokking-measures"))
            w0, w1 = _at(m, ph["memorised"], "weight_norm"), _at(m, ph["cleanup"], "weight_norm")
            claims.append(Claim(PAPER, "Total weight norm falls during circuit formation", "falls",
                                f"sum of squared weights {w0:.0f} -> {w1:.0f}", verdict(w1 < w0), "grokking-measures"))
        if ph["cleanup"] is not None:
            end = ph["grokked"] or r["final_epoch"]
            g0, g1 = _at(m, ph["memorised"] or 0, "gini_W_E"), _at(m, end, "gini_W_E")
            claims.append(Claim(PAPER, "Fourier sparsity (Gini of W_E's frequency norms) rises by the end of cleanup",
                                "rises", f"Gini(W_E) {g0:.2f} -> {g1:.2f}; Gini(W_L) "
                                f"{_at(m, ph['memorised'] or 0, 'gini_W_L'):.2f} -> {_at(m, end, 'gini_W_L'):.2f}",
                                verdict(g1 > g0), "grokking-measures"))
    a = r["ablation"]
    claims.append(Claim(PAPER, "Removing the key frequencies from the neurons destroys performance",
                        f"loss at chance or worse (paper 5.27 vs uniform {a['uniform_loss']:.2f})",
                        f"test loss {a['full_loss']:.3g} -> {a['without_key_frequencies']:.2f} nats",
                        verdict(a["without_key_frequencies"] >= 0.9 * a["uniform_loss"]), "grokking-ablation"))
    claims.append(Claim(PAPER, "Keeping only the key frequencies keeps (or improves) performance",
                        "equal or lower loss", f"test loss {a['full_loss']:.3g} -> {a['only_key_frequencies']:.3g} nats",
                        verdict(a["only_key_frequencies"] <= a["full_loss"] + 0.01), "grokking-ablation"))
    overlap = sorted(set(ks) & set(PAPER_KEY_FREQUENCIES))
    claims.append(Claim(PAPER, "Seed-0 key frequencies", str(PAPER_KEY_FREQUENCIES),
                        f"{ks} (shared: {overlap}); not required to match: a different RNG draws a different init",
                        "differs" if ks != PAPER_KEY_FREQUENCIES else "reproduced", "grokking-fourier"))
    return claims


def run_grokking_experiment(cfg: GrokConfig, out: Path | str, preset: str = "paper", progress: bool = True) -> dict:
    """Train (resuming or reusing a finished run in `out`), analyse, write out/results.json. Returns the results."""
    out = Path(out)
    run_dir = out / "run"
    t0 = time.perf_counter()
    run = train_grokking(cfg, run_dir, resume=(run_dir / "grokking.json").exists(), progress=progress)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = {"experiment": "grokking", "preset": preset,
              "differs_from_paper": dict(PRESETS.get(preset, {})), **analyze_grokking(run)}
    result["seconds"] = {"train": train_s, "analysis": time.perf_counter() - t0,
                         "train_total_in_run": (run.metrics[-1]["seconds"] if run.metrics else None)}
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    return result

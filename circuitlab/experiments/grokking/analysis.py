"""Analysis of a grokking run (Nanda et al. 2023): the Fourier algorithm in the final model, the progress measures
over checkpoints, the phases and the frequency ablations."""

from __future__ import annotations

import math
import time

from circuitlab.data.modular import modular_addition
from circuitlab.experiments.grokking.claims import grokking_claims
from circuitlab.experiments.grokking.results import Curves, FourierNorms, GrokkingResults, LogitFit
from circuitlab.grokking.fourier import (
    embedding_fourier_norms, fourier_names, frequency_norms, key_frequencies_from_neurons, logit_fit,
    neuron_activations, neuron_frequency_fractions, readout_fourier_norms,
)
from circuitlab.grokking.measures import all_logits, detect_phases, frequency_ablation, progress_measures
from circuitlab.training import Run


def analyze_grokking(run: Run, preset: str = "paper", differs: list[str] = (), max_points: int = 200) -> GrokkingResults:
    """Everything the paper measures, from a finished (or partial) modular-addition run."""
    p = run.task["p"]
    data = modular_addition(p, run.task["frac"], run.task["seed"])
    model = run.model()
    acts = neuron_activations(model, p)
    fractions = neuron_frequency_fractions(acts, p)  # [d_mlp, (p-1)/2]
    best_frac, best_k = fractions.max(1)
    # neurons that barely fire carry no frequency: count only neurons with non-trivial variance
    alive = acts.reshape(p * p, -1).var(0) > 1e-4 * acts.reshape(p * p, -1).var(0).max()
    ks = key_frequencies_from_neurons(fractions[alive], threshold=0.85, min_neurons=max(1, int(0.01 * alive.sum())))
    clusters = {int(k): int(((best_k + 1 == k) & (best_frac > 0.85) & alive).sum()) for k in ks}
    explained = float(((best_frac > 0.85) & alive).sum() / alive.sum().clamp_min(1))
    alphas, fve = logit_fit(all_logits(model, p), p, ks)
    metrics = [r for r in run.metrics if r["step"] > 0]  # the step-0 row has no training behind it

    epochs = run.checkpoints
    stride = max(1, math.ceil(len(epochs) / max_points))
    chosen = sorted(set(epochs[::stride]) | {epochs[-1]})
    t0 = time.perf_counter()
    measures = [progress_measures(run.model(e), p, ks, data.train, data.test, epoch=e) for e in chosen]
    measure_seconds = time.perf_counter() - t0

    we_norms, wl_norms = embedding_fourier_norms(model, p), readout_fourier_norms(model, p)
    result = GrokkingResults(
        experiment="grokking", preset=preset, differs_from_paper=list(differs),
        settings={"model": run.config.to_dict(), "train": run.train_config.to_dict(), "task": run.task}, p=p,
        final_epoch=epochs[-1], n_train=len(data.train), n_test=len(data.test),
        key_frequencies=ks, neuron_clusters=clusters, neurons_alive=int(alive.sum()),
        share_of_neurons_explained_by_one_frequency=explained,
        neuron_best_frequency=(best_k + 1).tolist(), neuron_best_fraction=best_frac.tolist(),
        logit_fit=LogitFit(alphas, fve),
        fourier_norms=FourierNorms(fourier_names(p), we_norms.tolist(), wl_norms.tolist(),
                                   frequency_norms(we_norms).tolist(), frequency_norms(wl_norms).tolist()),
        ablation=frequency_ablation(model, p, ks, rows=data.test), phases=detect_phases(metrics),
        progress_measures=measures, progress_measures_seconds=measure_seconds,
        curves=Curves(*([r[k] for r in metrics] for k in ("epoch", "train_loss", "test_loss", "train_acc", "test_acc"))),
    )
    result.claims = grokking_claims(result)
    return result

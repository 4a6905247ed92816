"""The grokking paper's claims (Nanda et al. 2023), judged on the experiment's typed results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuitlab.experiments.claims import Claim, verdict

if TYPE_CHECKING:
    from circuitlab.experiments.grokking.results import GrokkingResults

PAPER = "Nanda et al. 2023"
PAPER_KEY_FREQUENCIES = [14, 35, 41, 42, 52]
PAPER_PHASES = {"memorised": 1400, "cleanup": 9400, "grokked": 14000}
# "Long after": the paper's seed 0 has fitted its training set by ~1.4k epochs and groks at ~14k, ten times later; a
# model that generalises as it fits (train fraction >= 60% in the paper) has a ratio near 1. Half the paper's ratio.
LONG_AFTER = 5.0
# The plateau: in the paper's Figure the test loss hardly moves while the circuit forms (1.4k-9.4k) and collapses in
# cleanup; a test loss that falls steadily makes about half its fall in each phase. A third separates them.
PLATEAU_FALL = 1 / 3


def _at(series: list, epoch: int, key: str):
    return getattr(min(series, key=lambda r: abs(r.epoch - epoch)), key)


def grokking_claims(r: "GrokkingResults") -> list[Claim]:
    """Every claim is stated, whatever the run did. The Fourier claims (key frequencies, neurons, logit fit) are
    measured on any model (the algorithm forms before grokking, so a run stopped in circuit formation may show it);
    the progress-measure and ablation claims are judged only on a model that groks and has at least two key
    frequencies (otherwise 'not reproduced', with the reason)."""
    ph, ks, m = r.phases, r.key_frequencies, r.progress_measures
    groks = ph.grokked is not None
    usable = groks and len(ks) >= 2
    why = "" if usable else (" — judged only on a model that groks with >= 2 key frequencies: this one "
                             + ("does not grok" if not groks else f"has {len(ks)} key frequencies"))
    ratio = ph.grokked / ph.train_fit if groks and ph.train_fit else None
    claims = [Claim(PAPER, "The model groks: long after memorising the training set, it generalises",
                    f"test accuracy ≥ 99% at ≥ {LONG_AFTER:g}× the epoch the training set is fitted (paper, seed 0: "
                    "fitted by ~1.4k, grokked ~14k)",
                    f"test accuracy {r.final_test_acc:.1%} at epoch {r.final_epoch}; train accuracy ≥ 99% from epoch "
                    f"{ph.train_fit}, test accuracy ≥ 99% from epoch {ph.grokked}"
                    + (f" ({ratio:.1f}× later)" if ratio else ""),
                    verdict(ratio is not None and ratio >= LONG_AFTER), "grokking-curves")]
    plateau = (ph.found and ph.memorised < ph.cleanup < ph.grokked and ph.formation_fall is not None
               and ph.formation_fall <= PLATEAU_FALL and ph.cleanup_fall >= 0.5)
    falls = (f"; the test loss makes {100 * ph.formation_fall:.0f}% of its fall during circuit formation and "
             f"{100 * ph.cleanup_fall:.0f}% in cleanup" if ph.formation_fall is not None else "")
    claims.append(Claim(PAPER, "Three phases: memorisation, circuit formation, cleanup",
                        f"boundaries 1.4k / 9.4k / 14k epochs (seed 0); the test loss on a plateau while the circuit "
                        f"forms (≤ {100 * PLATEAU_FALL:.0f}% of its fall) and collapsing in cleanup (≥ 50%)",
                        f"{ph.memorised} / {ph.cleanup} / {ph.grokked} epochs (test loss peak; test loss leaves "
                        f"its plateau; test acc >= 99%; running-median smoothed){falls}", verdict(plateau),
                        "grokking-measures"))
    claims.append(Claim(PAPER, "A handful of key frequencies (the model uses a sparse Fourier algorithm)",
                        f"{len(PAPER_KEY_FREQUENCIES)} frequencies, {PAPER_KEY_FREQUENCIES} for the paper's seed 0",
                        f"{len(ks)} frequencies {ks} (neurons > 85% explained by one frequency, clusters "
                        f"{r.neuron_clusters})", verdict(2 <= len(ks) <= 8), "grokking-fourier"))
    explained = r.share_of_neurons_explained_by_one_frequency
    claims.append(Claim(PAPER, "Most neurons are explained by a single frequency", "84.6% of neurons > 85% explained",
                        f"{explained:.1%} of {r.neurons_alive} active neurons", verdict(explained >= 0.7),
                        "grokking-fourier"))
    fve = r.logit_fit.fraction_of_variance_explained
    claims.append(Claim(PAPER, "Logits are approximately sum_k alpha_k cos(w_k (a + b - c))", "~95% of variance explained",
                        f"{fve:.1%} of the logits' variance (double-centred), all p^2 inputs", verdict(fve >= 0.85),
                        "grokking-fourier"))
    first = lambda key, thr: next((x.epoch for x in m if getattr(x, key) < thr), None)  # noqa: E731
    r_e, t_e = first("restricted_loss", 1.0), first("test_loss", 1.0)
    claims.append(Claim(PAPER, "Restricted loss falls before test loss", "restricted loss drops below 1 nat first",
                        f"first below 1 nat: restricted loss at epoch {r_e}, test loss at epoch {t_e}" + why,
                        verdict(usable and r_e is not None and t_e is not None and r_e <= t_e), "grokking-measures"))
    at = lambda e, key: _at(m, e, key) if m and e is not None else None  # noqa: E731
    in_phases = usable and ph.found and bool(m)
    gate = why or ("" if in_phases else " — no circuit-formation phase to measure it in")
    ex0, ex1 = at(ph.memorised, "excluded_loss"), at(ph.cleanup, "excluded_loss")
    claims.append(Claim(PAPER, "Excluded loss rises during circuit formation", "rises from memorisation to cleanup",
                        (f"{ex0:.2f} -> {ex1:.2f} nats (training set)" if ex0 is not None else "not measured") + gate,
                        verdict(in_phases and ex1 > ex0), "grokking-measures"))
    w0, w1 = at(ph.memorised, "weight_norm"), at(ph.cleanup, "weight_norm")
    claims.append(Claim(PAPER, "Total weight norm falls during circuit formation", "falls",
                        (f"sum of squared weights {w0:.0f} -> {w1:.0f}" if w0 is not None else "not measured") + gate,
                        verdict(in_phases and w1 < w0), "grokking-measures"))
    g0, g1 = at(ph.memorised, "gini_W_E"), at(ph.grokked, "gini_W_E")
    claims.append(Claim(PAPER, "Fourier sparsity (Gini of W_E's frequency norms) rises by the end of cleanup",
                        "rises", (f"Gini(W_E) {g0:.2f} -> {g1:.2f}; Gini(W_L) {at(ph.memorised, 'gini_W_L'):.2f} -> "
                                  f"{at(ph.grokked, 'gini_W_L'):.2f}" if g0 is not None else "not measured") + gate,
                        verdict(in_phases and g1 > g0), "grokking-measures"))
    a = r.ablation
    claims.append(Claim(PAPER, "Removing the key frequencies from the neurons destroys performance",
                        f"loss at chance or worse (paper 5.27 vs uniform {a.uniform_loss:.2f})",
                        f"test loss {a.full_loss:.3g} -> {a.without_key_frequencies:.2f} nats" + why,
                        verdict(usable and a.without_key_frequencies >= 0.9 * a.uniform_loss), "grokking-ablation"))
    claims.append(Claim(PAPER, "Keeping only the key frequencies keeps (or improves) performance",
                        "equal or lower loss", f"test loss {a.full_loss:.3g} -> {a.only_key_frequencies:.3g} nats" + why,
                        verdict(usable and a.only_key_frequencies <= a.full_loss + 0.01), "grokking-ablation"))
    overlap = sorted(set(ks) & set(PAPER_KEY_FREQUENCIES))
    seed_verdict = "reproduced" if ks == PAPER_KEY_FREQUENCIES else "differs" if len(ks) >= 2 else "not reproduced"
    claims.append(Claim(PAPER, "Seed-0 key frequencies", str(PAPER_KEY_FREQUENCIES),
                        f"{ks} (shared: {overlap}); not required to match: a different RNG draws a different init",
                        seed_verdict, "grokking-fourier"))
    return claims

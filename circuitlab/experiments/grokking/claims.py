"""The grokking paper's claims (Nanda et al. 2023), judged on the experiment's typed results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuitlab.experiments.claims import Claim, verdict

if TYPE_CHECKING:
    from circuitlab.experiments.grokking.results import GrokkingResults

PAPER = "Nanda et al. 2023"
PAPER_KEY_FREQUENCIES = [14, 35, 41, 42, 52]
PAPER_PHASES = {"memorised": 1400, "cleanup": 9400, "grokked": 14000}


def _at(series: list, epoch: int | None, key: str):
    if epoch is None:
        return None
    return getattr(min(series, key=lambda r: abs(r.epoch - epoch)), key)


def grokking_claims(r: "GrokkingResults") -> list[Claim]:
    ph, ks, m = r.phases, r.key_frequencies, r.progress_measures
    claims = [Claim(PAPER, "The model groks: long after memorising the training set, it generalises",
                    "test accuracy > 99% (paper: ~14k epochs)",
                    f"test accuracy {r.final_test_acc:.1%} at epoch {r.final_epoch}; "
                    f">= 99% from epoch {ph.grokked}", verdict(ph.grokked is not None), "grokking-curves")]
    ordered = None not in (ph.memorised, ph.cleanup, ph.grokked) and ph.memorised < ph.cleanup <= ph.grokked
    claims.append(Claim(PAPER, "Three phases: memorisation, circuit formation, cleanup",
                        "boundaries 1.4k / 9.4k / 14k epochs (seed 0)",
                        f"{ph.memorised} / {ph.cleanup} / {ph.grokked} epochs (test loss peak; test loss leaves "
                        "its plateau; test acc >= 99%; running-median smoothed)", verdict(ordered), "grokking-measures"))
    claims.append(Claim(PAPER, "A handful of key frequencies (the model uses a sparse Fourier algorithm)",
                        f"{len(PAPER_KEY_FREQUENCIES)} frequencies, {PAPER_KEY_FREQUENCIES} for the paper's seed 0",
                        f"{len(ks)} frequencies {ks} (neurons > 85% explained by one frequency, clusters "
                        f"{r.neuron_clusters})", verdict(2 <= len(ks) <= 8), "grokking-fourier"))
    claims.append(Claim(PAPER, "Most neurons are explained by a single frequency", "84.6% of neurons > 85% explained",
                        f"{r.share_of_neurons_explained_by_one_frequency:.1%} of {r.neurons_alive} active neurons",
                        verdict(r.share_of_neurons_explained_by_one_frequency >= 0.7), "grokking-fourier"))
    fve = r.logit_fit.fraction_of_variance_explained
    claims.append(Claim(PAPER, "Logits are approximately sum_k alpha_k cos(w_k (a + b - c))", "~95% of variance explained",
                        f"{fve:.1%} of the logits' variance (double-centred), all p^2 inputs", verdict(fve >= 0.85),
                        "grokking-fourier"))
    if m:
        first = lambda key, thr: next((x.epoch for x in m if getattr(x, key) < thr), None)  # noqa: E731
        r_e, t_e = first("restricted_loss", 1.0), first("test_loss", 1.0)
        claims.append(Claim(PAPER, "Restricted loss falls before test loss", "restricted loss drops first",
                            f"first below 1 nat: restricted loss at epoch {r_e}, test loss at epoch {t_e}",
                            verdict(r_e is not None and (t_e is None or r_e <= t_e)), "grokking-measures"))
        if ph.memorised is not None and ph.cleanup is not None:
            ex0, ex1 = _at(m, ph.memorised, "excluded_loss"), _at(m, ph.cleanup, "excluded_loss")
            claims.append(Claim(PAPER, "Excluded loss rises during circuit formation", "rises from memorisation to cleanup",
                                f"{ex0:.2f} -> {ex1:.2f} nats (training set)", verdict(ex1 > ex0), "grokking-measures"))
            w0, w1 = _at(m, ph.memorised, "weight_norm"), _at(m, ph.cleanup, "weight_norm")
            claims.append(Claim(PAPER, "Total weight norm falls during circuit formation", "falls",
                                f"sum of squared weights {w0:.0f} -> {w1:.0f}", verdict(w1 < w0), "grokking-measures"))
        if ph.cleanup is not None:
            end = ph.grokked or r.final_epoch
            g0, g1 = _at(m, ph.memorised or 0, "gini_W_E"), _at(m, end, "gini_W_E")
            claims.append(Claim(PAPER, "Fourier sparsity (Gini of W_E's frequency norms) rises by the end of cleanup",
                                "rises", f"Gini(W_E) {g0:.2f} -> {g1:.2f}; Gini(W_L) "
                                f"{_at(m, ph.memorised or 0, 'gini_W_L'):.2f} -> {_at(m, end, 'gini_W_L'):.2f}",
                                verdict(g1 > g0), "grokking-measures"))
    a = r.ablation
    claims.append(Claim(PAPER, "Removing the key frequencies from the neurons destroys performance",
                        f"loss at chance or worse (paper 5.27 vs uniform {a.uniform_loss:.2f})",
                        f"test loss {a.full_loss:.3g} -> {a.without_key_frequencies:.2f} nats",
                        verdict(a.without_key_frequencies >= 0.9 * a.uniform_loss), "grokking-ablation"))
    claims.append(Claim(PAPER, "Keeping only the key frequencies keeps (or improves) performance",
                        "equal or lower loss", f"test loss {a.full_loss:.3g} -> {a.only_key_frequencies:.3g} nats",
                        verdict(a.only_key_frequencies <= a.full_loss + 0.01), "grokking-ablation"))
    overlap = sorted(set(ks) & set(PAPER_KEY_FREQUENCIES))
    claims.append(Claim(PAPER, "Seed-0 key frequencies", str(PAPER_KEY_FREQUENCIES),
                        f"{ks} (shared: {overlap}); not required to match: a different RNG draws a different init",
                        "differs" if ks != PAPER_KEY_FREQUENCIES else "reproduced", "grokking-fourier"))
    return claims

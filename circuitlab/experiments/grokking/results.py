"""Typed results of the grokking experiment (Nanda et al. 2023), as OUT/results.json holds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitlab.experiments.claims import Claim
from circuitlab.grokking.measures import FrequencyAblation, Phases, ProgressMeasures
from circuitlab.results import Result


@dataclass
class LogitFit(Result):
    """logits ≈ sum_k alpha_k cos(w_k (a + b - c)): alpha per key frequency, and the variance explained."""

    alpha: dict[int, float]
    fraction_of_variance_explained: float


@dataclass
class FourierNorms(Result):
    names: list[str]
    W_E: list[float]
    W_L: list[float]
    W_E_by_frequency: list[float]
    W_L_by_frequency: list[float]


@dataclass
class Curves(Result):
    epoch: list[int]
    train_loss: list[float]
    test_loss: list[float]
    train_acc: list[float]
    test_acc: list[float]


@dataclass
class GrokkingResults(Result):
    """settings: the run's model, train and task settings; p: the modulus."""

    experiment: str
    preset: str
    differs_from_paper: list[str]
    settings: dict
    p: int
    final_epoch: int
    n_train: int
    n_test: int
    key_frequencies: list[int]
    neuron_clusters: dict[int, int]
    neurons_alive: int
    share_of_neurons_explained_by_one_frequency: float
    neuron_best_frequency: list[int]
    neuron_best_fraction: list[float]
    logit_fit: LogitFit
    fourier_norms: FourierNorms
    ablation: FrequencyAblation
    phases: Phases
    progress_measures: list[ProgressMeasures]
    progress_measures_seconds: float
    curves: Curves
    claims: list[Claim] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @property
    def final_test_acc(self) -> float:
        return self.curves.test_acc[-1] if self.curves.test_acc else float("nan")

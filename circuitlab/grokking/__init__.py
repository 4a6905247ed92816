"""Grokking analyses (Nanda et al. 2023): the Fourier basis and algorithm, progress measures, ablations."""

from circuitlab.grokking.fourier import (
    all_inputs, embedding_fourier_norms, fourier_2d, fourier_basis, fourier_names, frequency_norms,
    key_frequencies_from_neurons, logit_fit, neuron_activations, neuron_frequency_fractions, readout_fourier_norms,
    sum_of_cosines_basis,
)
from circuitlab.grokking.measures import (
    FrequencyAblation, Phases, ProgressMeasures, all_logits, cross_entropy, detect_phases, excluded_logits,
    frequency_ablation, gini, progress_measures, restricted_logits,
)

__all__ = [
    "FrequencyAblation", "Phases", "ProgressMeasures", "all_inputs", "all_logits", "cross_entropy", "detect_phases",
    "embedding_fourier_norms", "excluded_logits", "fourier_2d", "fourier_basis", "fourier_names", "frequency_ablation",
    "frequency_norms", "gini", "key_frequencies_from_neurons", "logit_fit", "neuron_activations",
    "neuron_frequency_fractions", "progress_measures", "readout_fourier_norms", "restricted_logits",
    "sum_of_cosines_basis",
]

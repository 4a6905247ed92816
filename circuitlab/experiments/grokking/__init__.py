"""The grokking paper (Nanda et al. 2023): modular addition, the Fourier algorithm, progress measures, phases and
frequency ablations, with claims, console tables and the report section."""

from circuitlab.experiments.grokking.analysis import analyze_grokking
from circuitlab.experiments.grokking.claims import grokking_claims
from circuitlab.experiments.grokking.presets import PRESETS, grokking_model, grokking_preset
from circuitlab.experiments.grokking.results import GrokkingResults
from circuitlab.experiments.grokking.run import run_grokking_experiment

__all__ = ["GrokkingResults", "PRESETS", "analyze_grokking", "grokking_claims", "grokking_model", "grokking_preset",
           "run_grokking_experiment"]

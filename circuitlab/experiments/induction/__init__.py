"""The induction-heads paper (Olsson et al. 2022): the in-context-learning phase change, controls, ablations and
behaviours, with claims, console tables and the report section."""

from circuitlab.experiments.induction.analysis import analyze_induction
from circuitlab.experiments.induction.claims import induction_claims
from circuitlab.experiments.induction.presets import PRESETS, induction_preset
from circuitlab.experiments.induction.results import InductionResults
from circuitlab.experiments.induction.run import run_induction_experiment, train_all

__all__ = ["InductionResults", "PRESETS", "analyze_induction", "induction_claims", "induction_preset",
           "run_induction_experiment", "train_all"]

"""The IOI paper (Wang et al. 2022, 'Interpretability in the Wild'): the indirect-object-identification circuit of a
pretrained model, found by path patching backwards from the logits and evaluated for faithfulness, completeness
and minimality, with claims, console tables and the report section."""

from circuitlab.experiments.ioi.analysis import analyze_ioi
from circuitlab.experiments.ioi.claims import ioi_claims
from circuitlab.experiments.ioi.presets import DEFAULT_MODEL, PRESETS
from circuitlab.experiments.ioi.results import IOIResults
from circuitlab.experiments.ioi.run import run_ioi_experiment

__all__ = ["DEFAULT_MODEL", "IOIResults", "PRESETS", "analyze_ioi", "ioi_claims", "run_ioi_experiment"]

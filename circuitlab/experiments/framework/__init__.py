"""The Framework paper (Elhage et al. 2021): one model's circuits read from its weights (`analyze_model`,
`analyze_run`), the claims over the 0/1/2-layer models, console tables and the report section."""

from circuitlab.experiments.framework.analysis import analyze_model, analyze_run
from circuitlab.experiments.framework.claims import framework_claims
from circuitlab.experiments.framework.presets import PRESETS
from circuitlab.experiments.framework.results import HeadRow, ModelAnalysis
from circuitlab.experiments.framework.run import FrameworkResults, run_framework_experiment

__all__ = ["FrameworkResults", "HeadRow", "ModelAnalysis", "PRESETS", "analyze_model", "analyze_run",
           "framework_claims", "run_framework_experiment"]

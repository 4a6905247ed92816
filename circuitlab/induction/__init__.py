"""Induction heads and in-context learning over training (Olsson et al. 2022): the ICL score, per-checkpoint
measurements, phase windows, ablations and behaviours."""

from circuitlab.induction.ablation import AblationResult, ablate_heads, ablated_per_token_loss
from circuitlab.induction.behaviours import copying_behaviour, pattern_behaviour, translation_behaviour
from circuitlab.induction.icl import icl_positions, icl_score, per_token_loss, per_token_pca, repeated_tokens_loss
from circuitlab.induction.measure import Measurement, Probe, measure_checkpoint, measure_run
from circuitlab.induction.phase import Window, jump_window, loss_bump, overlaps

__all__ = [
    "AblationResult", "Measurement", "Probe", "Window", "ablate_heads", "ablated_per_token_loss", "copying_behaviour",
    "icl_positions", "icl_score", "jump_window", "loss_bump", "measure_checkpoint", "measure_run", "overlaps",
    "pattern_behaviour", "per_token_loss", "per_token_pca", "repeated_tokens_loss", "translation_behaviour",
]

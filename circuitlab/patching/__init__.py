"""Causal analyses on any model with TransformerLens hook names (a circuitlab model or a TransformerBridge):
activation, path and attribution patching, ablations, direct logit attribution and the logit lens."""

from circuitlab.patching.ablation import ablate_each_head, ablate_heads
from circuitlab.patching.activation import patch_heads, patch_layers
from circuitlab.patching.attribution import Agreement, agreement, attribution_patch
from circuitlab.patching.common import LogitDiff, PatchingResult, reusing_clean_runs
from circuitlab.patching.logit import LogitAttribution, LogitLens, direct_logit_attribution, logit_lens
from circuitlab.patching.path import path_attribution, path_patch

__all__ = ["Agreement", "LogitAttribution", "LogitDiff", "LogitLens", "PatchingResult", "ablate_each_head",
           "ablate_heads", "agreement", "attribution_patch", "direct_logit_attribution", "logit_lens", "patch_heads",
           "patch_layers", "path_attribution", "path_patch", "reusing_clean_runs"]

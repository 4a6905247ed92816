"""The model: config, the hooked transformer, and conversion to TransformerLens's native model."""

from circuitlab.model.config import PRESETS, ModelConfig, get_preset
from circuitlab.model.loss import lm_cross_entropy
from circuitlab.model.model import Transformer

__all__ = ["ModelConfig", "PRESETS", "Transformer", "get_preset", "lm_cross_entropy"]

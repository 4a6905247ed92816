"""The model: config, the hooked transformer, losses, and conversion to TransformerLens's native model."""

from circuitlab.model.config import ModelConfig
from circuitlab.model.loss import lm_cross_entropy
from circuitlab.model.model import Transformer

__all__ = ["ModelConfig", "Transformer", "lm_cross_entropy"]

"""Training: config, loop, checkpoints, and the Run directory analyses read."""

from circuitlab.training.config import TrainConfig
from circuitlab.training.run import Run
from circuitlab.training.trainer import EvalContext, train

__all__ = ["EvalContext", "Run", "TrainConfig", "train"]

"""Training: one loop for every task, its config, checkpoints, presets, and the Run directory analyses read."""

from circuitlab.training.config import TrainConfig
from circuitlab.training.loop import EvalContext, train
from circuitlab.training.presets import PRESETS, Preset, get_preset
from circuitlab.training.run import Run
from circuitlab.training.tasks import LanguageModelTask, ModularAdditionTask, SequenceTaskTraining, Task

__all__ = ["EvalContext", "LanguageModelTask", "ModularAdditionTask", "PRESETS", "Preset", "Run", "SequenceTaskTraining",
           "Task", "TrainConfig", "get_preset", "train"]

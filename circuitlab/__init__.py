"""circuitlab: train small transformers from scratch and read how they compute."""

from circuitlab.errors import CircuitlabError
from circuitlab.heads import Head
from circuitlab.model import ModelConfig, Transformer

__version__ = "0.1.0"


def load_run(path):
    """Open a training run directory: `.config`, `.train_config`, `.task`, `.tokenizer`, `.metrics`, `.checkpoints`,
    `.model(step=None)`."""
    from circuitlab.training.run import Run

    return Run.open(path)


__all__ = ["CircuitlabError", "Head", "ModelConfig", "Transformer", "load_run", "__version__"]

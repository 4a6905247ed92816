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


def load_model(name_or_path, device: str = "cpu", **kw):
    """A pretrained causal LM as a TransformerLens `TransformerBridge` with TransformerLens hook names: a local
    folder, a .gguf file or a hub name (offline: the local cache only). See `circuitlab.model.pretrained`."""
    from circuitlab.model.pretrained import load_model as load

    return load(name_or_path, device=device, **kw)


__all__ = ["CircuitlabError", "Head", "ModelConfig", "Transformer", "load_model", "load_run", "__version__"]

"""circuitlab: train small transformers from scratch and read how they compute."""

from circuitlab.errors import CircuitlabError
from circuitlab.mkl import use_strict_mode

# before anything circuitlab runs multiplies: MKL reads MKL_CBWR at its first call (circuitlab.mkl; Intel CPUs only)
use_strict_mode()

__version__ = "0.1.0"


def __getattr__(name: str):
    """Head, ModelConfig and Transformer load torch and TransformerLens (seconds): only when asked for, so that `circuitlab
    --help` is quick and a Ctrl-C while a command starts is one line, not a traceback."""
    if name in ("ModelConfig", "Transformer"):
        from circuitlab import model

        return getattr(model, name)
    if name == "Head":
        from circuitlab.heads import Head

        return Head
    raise AttributeError(f"module 'circuitlab' has no attribute {name!r}")


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

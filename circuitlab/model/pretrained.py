"""Pretrained causal language models as TransformerLens `TransformerBridge`s: a local folder (config, safetensors,
tokenizer), a GGUF file, or a Hugging Face hub name where the network (or the local hub cache) has it.

`load_model` boots the model with `TransformerBridge.boot_transformers` and turns on TransformerLens's
compatibility mode, so the model has the same hook names as circuitlab's own (blocks.L.attn.hook_z, hook_resid_pre,
ln_final.hook_scale, ...) and the weights are processed as HookedTransformer processed them (LayerNorm folded,
writing weights and unembedding centred). Every analysis that takes a circuitlab model takes the bridge.

Offline (HF_HUB_OFFLINE=1) it never touches the network: a hub name is read from the local cache, or refused in
one line saying what is missing. A model whose weights would not fit in memory is refused before loading.
"""

from __future__ import annotations

import os
from pathlib import Path

from circuitlab.errors import CircuitlabError

WEIGHT_PATTERNS = ("*.safetensors", "*.gguf")


def _available_bytes() -> int | None:
    """Memory available to this process (Linux /proc/meminfo's MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_fits(weights: list[Path], what: str) -> None:
    """Refuse weights larger than 80% of the available memory (loading needs about their size in float32)."""
    size = sum(p.stat().st_size for p in weights)
    avail = _available_bytes()
    if avail is not None and size > 0.8 * avail:
        raise CircuitlabError(f"{what}: its weights take {size / 2**30:.1f} GiB and only {avail / 2**30:.1f} GiB of "
                              "memory is available: use a smaller model or a machine with more memory")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _local_folder(path: Path) -> list[Path]:
    if not (path / "config.json").exists():
        raise CircuitlabError(f"{path} has no config.json: a model folder needs config.json, its weights "
                              "(*.safetensors) and a tokenizer, as `save_pretrained` writes them")
    weights = [p for pattern in ("*.safetensors",) for p in path.glob(pattern)]
    if not weights:
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8])
        raise CircuitlabError(f"{path} has no weights (*.safetensors; found: {found or 'nothing'}): save the model "
                              "with `save_pretrained(..., safe_serialization=True)`")
    return weights


def _cached_hub_model(name: str) -> None:
    """Offline: the hub model must be in the local cache (config and weights), or one clear line."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json")
    if not isinstance(config, str):
        raise CircuitlabError(f"model {name!r} is neither a local folder nor in the Hugging Face cache, and "
                              "HF_HUB_OFFLINE=1 forbids downloading it: pass a folder saved with `save_pretrained`, "
                              "or download it where the network is")
    folder = Path(config).parent
    weights = [p for p in folder.glob("*.safetensors")]
    if not weights:
        raise CircuitlabError(f"model {name!r} is in the Hugging Face cache without safetensors weights "
                              f"({folder}): download them where the network is")
    _check_fits(weights, f"model {name!r}")


def load_model(name_or_path: str | Path, device: str = "cpu", dtype=None, compatibility: bool = True):
    """A TransformerBridge for a causal LM: a local folder, a .gguf file (through `transformers`, with the tokenizer
    it embeds), or a hub name. compatibility=True: TransformerLens hook names and HookedTransformer's weight
    processing (fold LayerNorm, centre writing weights and the unembedding); see the module docstring."""
    import torch

    from transformer_lens.model_bridge import TransformerBridge

    dtype = dtype or torch.float32
    path = Path(name_or_path).expanduser()
    kwargs: dict = {}
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise CircuitlabError(f"{path} is a file but not a .gguf model: pass a model folder (config.json, "
                                      "*.safetensors, tokenizer) or a .gguf file")
            _check_fits([path], str(path))
            kwargs = _gguf(path, dtype)
            name = str(path.parent)
        else:
            _check_fits(_local_folder(path), str(path))
            name = str(path)
    else:
        name = str(name_or_path)
        if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf"):
            raise CircuitlabError(f"{name} does not exist: pass a model folder, a .gguf file or a Hugging Face "
                                  "name such as gpt2")
        if _offline():
            _cached_hub_model(name)
    try:
        bridge = TransformerBridge.boot_transformers(name, device=device, dtype=dtype, **kwargs)
    except CircuitlabError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CircuitlabError(f"model {name_or_path!s} could not be loaded: {first[:300]}") from None
    if compatibility:
        bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    return bridge


def _gguf(path: Path, dtype) -> dict:
    """A GGUF file's model and tokenizer through `transformers` (dequantised to `dtype`; needs the `gguf` package)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise CircuitlabError(f"reading {path} needs the `gguf` package ({e}): pip install gguf") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CircuitlabError(f"{path} could not be read as a GGUF model: {str(e).splitlines()[0][:300]}") from None
    return {"hf_model": model, "tokenizer": tokenizer}

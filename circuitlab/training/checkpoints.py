"""Checkpoints: safetensors weights plus JSON config, never pickle. Every write is atomic (temp file + rename).

RUN/checkpoints/step-{step:09d}.safetensors  model weights; metadata: step, tokens, model config (JSON), digest
RUN/optimizer.safetensors                    AdamW state of the latest checkpoint; metadata: step

digest: SHA-256 of every tensor's name, dtype, shape and bytes (in name order), checked on load, so a checkpoint
whose bytes changed (a flipped bit, a partial copy) is refused instead of loading garbage. A checkpoint written
before digests existed still loads, with a note.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig, Transformer
from circuitlab.results import atomic_write

CKPT_RE = re.compile(r"step-(\d{9})\.safetensors$")
log = logging.getLogger("circuitlab")
_noted: set[Path] = set()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:09d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[int]:
    d = Path(run_dir) / "checkpoints"
    return sorted(int(m.group(1)) for p in d.glob("step-*.safetensors") if (m := CKPT_RE.search(p.name))) if d.is_dir() else []


def save_checkpoint(run_dir: Path, model: Transformer, step: int, tokens: int) -> Path:
    path = checkpoint_path(run_dir, step)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"step": str(step), "tokens": str(tokens), "model_config": json.dumps(model.cfg.to_dict()),
            "digest": tensor_digest(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def _read(path: Path, remedy: str = "delete it to use an earlier one") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file, its digest checked; `remedy` ends the error line."""
    if not path.exists():
        raise CircuitlabError(f"checkpoint {path} does not exist: list them with `circuitlab info {path.parent.parent}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CircuitlabError(
            f"checkpoint {path} is corrupt or truncated ({str(e).splitlines()[0]}): {remedy}"
        ) from None
    want = meta.get("digest")
    if want is None:
        if path.parent not in _noted:
            _noted.add(path.parent)
            log.info("checkpoints in %s have no digest (written before digests existed): loaded unchecked", path.parent)
    elif tensor_digest(tensors) != want:
        raise CircuitlabError(f"checkpoint {path} is damaged: its tensors do not match the digest saved with them; "
                              f"{remedy}")
    return tensors, meta


def load_checkpoint(path: Path, cfg: ModelConfig, device: str | torch.device = "cpu") -> tuple[Transformer, dict]:
    """A model with the checkpoint's weights. The checkpoint's config must match `cfg` (the run's)."""
    tensors, meta = _read(Path(path))
    try:
        saved = json.loads(meta.get("model_config", "{}"))
        info = {"step": int(meta.get("step", -1)), "tokens": int(meta.get("tokens", -1))}
        if not isinstance(saved, dict):
            raise ValueError("model_config is not an object")
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise CircuitlabError(f"checkpoint {path} has damaged metadata ({e}): delete it to use an earlier one") from None
    diff = {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if k in saved and saved[k] != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise CircuitlabError(f"checkpoint {path} does not match the run's model config ({what}): use the run it came from")
    model = Transformer(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CircuitlabError(f"checkpoint {path} does not fit the model config ({str(e).strip().splitlines()[-1].strip()}): use the run it came from") from None
    return model.to(device), info


def save_optimizer(run_dir: Path, optimizer: torch.optim.Optimizer, model: Transformer, step: int, extra: dict | None = None) -> None:
    """AdamW state by parameter name (exp_avg, exp_avg_sq, step), so resuming continues the same trajectory.
    `extra` (JSON) holds the loop's own state, e.g. the train losses since the last evaluation."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    meta = {"step": str(step), "extra": json.dumps(extra or {}), "digest": tensor_digest(tensors)}
    atomic_write(Path(run_dir) / "optimizer.safetensors", lambda tmp: save_file(tensors, tmp, metadata=meta))


def optimizer_step(run_dir: Path) -> int | None:
    path = Path(run_dir) / "optimizer.safetensors"
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("step", -1))
    except (SafetensorError, OSError, ValueError) as e:
        raise CircuitlabError(f"{path} is corrupt or truncated ({str(e).splitlines()[0]}): restore it, or train "
                              "again into another --out") from None


def load_optimizer(run_dir: Path, optimizer: torch.optim.Optimizer, model: Transformer) -> dict:
    """Restore the optimizer state; returns the `extra` dict saved with it."""
    path = Path(run_dir) / "optimizer.safetensors"
    # Not "delete it": without the optimizer state the run cannot continue exactly (resume refuses it).
    tensors, meta = _read(path, "restore it from a copy of the run, or train again into another --out")
    params = dict(model.named_parameters())
    bad = lambda why: CircuitlabError(  # noqa: E731
        f"{path} does not fit the model ({why}): the run's files do not belong together; resume from a copy of the "
        "run that has its own optimizer state")
    for key, value in tensors.items():
        name, _, field = key.partition("::")
        if name not in params:
            raise bad(f"it names parameter {name!r}, which the model lacks")
        p = params[name]
        # The fused AdamW kernel reads and writes these tensors in place without checking them: a wrong shape or
        # dtype would corrupt memory, so each must match its parameter exactly.
        want = (torch.Size([]), None) if field == "step" else (p.shape, p.dtype)
        if field not in ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            raise bad(f"unknown state {key!r}")
        if value.shape != want[0] or (want[1] is not None and value.dtype != want[1]) or not value.dtype.is_floating_point:
            raise bad(f"{key} has shape {tuple(value.shape)} and dtype {value.dtype}, the parameter "
                      f"{tuple(want[0])} and {want[1] or 'a float'}")
        if not torch.isfinite(value).all():
            raise bad(f"{key} holds non-finite values")
        if field == "step" and (value.item() < 0 or value.item() != int(value.item())):
            raise bad(f"{key} is {value.item()}, not a count of steps")
        if field in ("exp_avg_sq", "max_exp_avg_sq") and (value < 0).any():
            raise bad(f"{key} holds negative values (a second moment cannot be negative)")
    # AdamW needs every field of a parameter's state once it has any: a missing one would fail inside its step.
    fields: dict[str, set] = {}
    for key in tensors:
        name, _, field = key.partition("::")
        fields.setdefault(name, set()).add(field)
    for name, have in fields.items():
        if missing := {"step", "exp_avg", "exp_avg_sq"} - have:
            raise bad(f"parameter {name!r} lacks {', '.join(sorted(missing))}")
    try:
        extra = json.loads(meta.get("extra", "{}"))
        if not isinstance(extra, dict) or not isinstance(extra.get("recent_train_losses", []), list):
            raise ValueError("not an object with a list of recent train losses")
        if "recent_train_losses" in extra:
            extra["recent_train_losses"] = [float(x) for x in extra["recent_train_losses"]]
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise bad(f"its loop state is damaged: {e}") from None
    for key, value in tensors.items():
        name, _, field = key.partition("::")
        p = params[name]
        optimizer.state[p][field] = value if field == "step" else value.to(p.device)
    return extra

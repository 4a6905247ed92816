"""Training a small model on a synthetic task (`data.synthetic`): masked next-token loss, AdamW, fresh sequences
every step. The finished model is saved as safetensors + JSON in `out` and reused when it is there."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from circuitlab.data.synthetic import Task
from circuitlab.model import ModelConfig, Transformer
from circuitlab.training.checkpoints import atomic_write_text, checkpoint_path, load_checkpoint, save_checkpoint


def masked_loss(model: Transformer, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions where mask is true (position i predicts token i + 1)."""
    logits = model(tokens)[:, :-1]
    return F.cross_entropy(logits[mask].float(), tokens[:, 1:][mask])


def masked_accuracy(model: Transformer, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    with torch.no_grad():
        pred = model(tokens)[:, :-1].argmax(-1)
    return float((pred == tokens[:, 1:])[mask].float().mean())


def train_task(cfg: ModelConfig, task: Task, out: Path | str, steps: int = 1500, batch: int = 32, lr: float = 3e-3,
               warmup: int = 100, seed: int = 0, log_every: int = 100) -> tuple[Transformer, dict]:
    """Train (or load, when `out` holds a finished model with the same settings) and return (model, info)."""
    out = Path(out)
    settings = {"task": task.name, "model": cfg.to_dict(), "steps": steps, "batch": batch, "lr": lr,
                "warmup": warmup, "seed": seed}
    meta = out / "task.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        if info.get("settings") == settings:
            return load_checkpoint(checkpoint_path(out, steps), cfg)[0], info
    torch.manual_seed(seed)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    g = torch.Generator().manual_seed(seed)
    held_g = torch.Generator().manual_seed(seed + 10_000)
    held = task.sample(256, held_g)[:2]
    history, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        tokens, mask = task.sample(batch, g)[:2]
        loss = masked_loss(model, tokens, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                history.append({"step": step, "train_loss": float(loss), "heldout_loss": float(masked_loss(model, *held)),
                                "heldout_accuracy": masked_accuracy(model, *held)})
    info = {"settings": settings, "history": history, "seconds": time.perf_counter() - t0}
    save_checkpoint(out, model, steps, steps * batch * task.n_ctx)
    atomic_write_text(meta, json.dumps(info, indent=1))
    return model, info

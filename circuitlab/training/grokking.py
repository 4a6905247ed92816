"""Training the grokking model of Nanda et al. (2023) on modular addition, full batch, as in the paper.

Model: 1 layer, d_model 128, 4 heads of 32, ReLU MLP 512, no LayerNorm, learned positions, no attention biases,
the paper's init. Optimiser: AdamW lr 1e-3, weight decay 1.0, betas (0.9, 0.98), LambdaLR min(step / 10, 1) (so the
first update has lr 0, as in the authors' code). Loss: float64 cross-entropy of the last position over the p answers (the
"=" column of W_U is never a target: it only decays, as if d_vocab_out = p).

Speed: only the last position feeds the loss, so `last_position_logits` computes queries, the MLP and the unembedding
there only, and keys/values of each position as tables over the vocabulary (p + 1 rows) gathered per example,
instead of the full model on every position (what the authors' code and `Transformer.forward` do).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab.data.modular import ModularAddition, modular_addition
from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig, Transformer
from circuitlab.model.last_position import last_position_logits
from circuitlab.training.checkpoints import (
    atomic_write_text, list_checkpoints, load_checkpoint, load_optimizer, save_checkpoint, save_optimizer, checkpoint_path,
)


@dataclass
class GrokConfig:
    p: int = 113
    frac: float = 0.3
    seed: int = 0
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 10
    epochs: int = 40_000
    checkpoint_every: int = 100
    log_every: int = 10
    device: str = "cpu"

    def __post_init__(self) -> None:
        problems = [f"{k} must be >= 1" for k in ("epochs", "checkpoint_every", "log_every", "d_model", "n_heads",
                                                   "d_head", "d_mlp") if getattr(self, k) < 1]
        if self.lr <= 0 or self.weight_decay < 0:
            problems.append("lr must be > 0 and weight_decay >= 0")
        if problems:
            raise CircuitlabError("invalid grokking config: " + "; ".join(problems))

    def model_config(self) -> ModelConfig:
        return ModelConfig(n_layers=1, d_model=self.d_model, n_heads=self.n_heads, d_head=self.d_head, n_ctx=3,
                           d_vocab=self.p + 1, positional_embedding_type="standard", d_mlp=self.d_mlp, init="nanda",
                           seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GrokConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def loss_and_accuracy(logits: Tensor, labels: Tensor, p: int) -> tuple[Tensor, float]:
    """Cross-entropy in float64, as the authors' code computes it: once the training set is memorised the loss is
    ~1e-7, where float32 log-softmax rounds and the updates turn into periodic loss spikes."""
    logits = logits[:, :p].double()
    return F.cross_entropy(logits, labels), float((logits.argmax(-1) == labels).float().mean())


def make_optimizer(model: Transformer, cfg: GrokConfig) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(step / cfg.warmup_steps, 1.0))
    return opt, sched


@dataclass
class GrokRun:
    """A grokking run directory: grokking.json (config), checkpoints/step-EPOCH.safetensors, metrics.jsonl."""

    path: Path
    config: GrokConfig

    @classmethod
    def open(cls, path: Path | str) -> "GrokRun":
        path = Path(path)
        f = path / "grokking.json"
        if not f.exists():
            raise CircuitlabError(f"{path} is not a grokking run (no grokking.json); create one with "
                                  "`circuitlab experiment grokking --out DIR`")
        return cls(path, GrokConfig.from_dict(json.loads(f.read_text())["config"]))

    @property
    def checkpoints(self) -> list[int]:
        return list_checkpoints(self.path)

    def model(self, epoch: int | None = None) -> Transformer:
        epoch = self.checkpoints[-1] if epoch is None else epoch
        return load_checkpoint(checkpoint_path(self.path, epoch), self.config.model_config())[0]

    def data(self) -> ModularAddition:
        return modular_addition(self.config.p, self.config.frac, self.config.seed)

    @property
    def metrics(self) -> list[dict]:
        f = self.path / "metrics.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def train_grokking(cfg: GrokConfig, out: Path | str, resume: bool = False, progress: bool = True) -> GrokRun:
    """Full-batch training; checkpoints every `checkpoint_every` epochs (and the last), train/test loss and accuracy
    every `log_every` epochs in metrics.jsonl. With resume=True, continues from the latest checkpoint exactly
    (full-batch training is deterministic given the optimizer state)."""
    out = Path(out)
    data = modular_addition(cfg.p, cfg.frac, cfg.seed)
    model = Transformer(cfg.model_config()).to(cfg.device)
    opt, sched = make_optimizer(model, cfg)
    start = 0
    meta = out / "grokking.json"
    if meta.exists() and not resume:
        raise CircuitlabError(f"{out} already holds a grokking run; pass --resume to continue it or choose another --out")
    if resume and meta.exists():
        old = GrokConfig.from_dict(json.loads(meta.read_text())["config"])
        same = {k: v for k, v in old.to_dict().items() if k not in ("epochs", "checkpoint_every", "log_every", "device")}
        new = {k: v for k, v in cfg.to_dict().items() if k in same}
        if same != new:
            diff = ", ".join(f"{k}: {same[k]} -> {new[k]}" for k in same if same[k] != new[k])
            raise CircuitlabError(f"cannot resume {out} with different settings ({diff}); use a new --out")
        done = list_checkpoints(out)
        if done:
            start = done[-1]
            model = load_checkpoint(checkpoint_path(out, start), cfg.model_config(), cfg.device)[0]
            opt, sched = make_optimizer(model, cfg)
            if start > 0:
                load_optimizer(out, opt, model)
                sched.last_epoch = start
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * min(start / cfg.warmup_steps, 1.0)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, json.dumps({"config": cfg.to_dict(), "n_train": len(data.train), "n_test": len(data.test)},
                                       indent=2))
    metrics_path = out / "metrics.jsonl"
    rows = [r for r in (GrokRun(out, cfg).metrics if resume else []) if r["epoch"] <= start]
    atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
    dev = cfg.device
    x_train, y_train = data.tokens[data.train].to(dev), data.labels[data.train].to(dev)
    x_test, y_test = data.tokens[data.test].to(dev), data.labels[data.test].to(dev)
    if start == 0:
        save_checkpoint(out, model, 0, 0)
    bar = _Bar(cfg.epochs, start) if progress else None
    t0 = time.perf_counter()
    with metrics_path.open("a") as log:
        for epoch in range(start + 1, cfg.epochs + 1):
            logits = last_position_logits(model, x_train)
            loss, acc = loss_and_accuracy(logits, y_train, cfg.p)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise CircuitlabError(f"loss became {float(loss)} at epoch {epoch}; lower --lr")
            if epoch % cfg.log_every == 0 or epoch == cfg.epochs:
                with torch.no_grad():
                    test_loss, test_acc = loss_and_accuracy(last_position_logits(model, x_test), y_test, cfg.p)
                row = {"epoch": epoch, "train_loss": float(loss.detach()), "train_acc": acc, "test_loss": float(test_loss),
                       "test_acc": test_acc, "seconds": round(time.perf_counter() - t0, 2)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                if bar:
                    bar.update(epoch, row)
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                save_checkpoint(out, model, epoch, epoch * len(data.train))
                save_optimizer(out, opt, model, epoch)
    if bar:
        bar.stop()
    return GrokRun(out, cfg)


class _Bar:
    def __init__(self, total: int, start: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]grokking"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                          TextColumn("{task.fields[rate]} epochs/s"), TextColumn("{task.fields[msg]}"),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self.task = self.p.add_task("grok", total=total, completed=start, rate="-", msg="")
        self.p.start()
        self.start, self.t0 = start, time.perf_counter()

    def update(self, epoch: int, row: dict) -> None:
        rate = (epoch - self.start) / max(1e-9, time.perf_counter() - self.t0)
        self.p.update(self.task, completed=epoch, rate=f"{rate:,.0f}",
                      msg=f"train {row['train_loss']:.2e} test {row['test_loss']:.2e} acc {row['test_acc']:.1%}")

    def stop(self) -> None:
        self.p.stop()

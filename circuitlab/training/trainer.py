"""The training loop: AdamW, warm-up + cosine/constant schedule, gradient clipping, log-spaced checkpoints,
evaluation callbacks, exact resume.

Batches are a pure function of (seed, step): window offsets are drawn from a generator seeded with both, so a run
resumed from step S sees exactly the batches the uninterrupted run saw (tests/test_training.py checks the final
weights are equal).
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from circuitlab.data.tokens import BOS_ID, TokenData
from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig, Transformer
from circuitlab.training.checkpoints import (
    atomic_write_text, checkpoint_path, load_checkpoint, load_optimizer, optimizer_step,
    save_checkpoint, save_optimizer,
)
from circuitlab.training.config import TrainConfig
from circuitlab.training.flops import peak_matmul_flops, train_flops_per_token
from circuitlab.training.run import Run, read_metrics

log = logging.getLogger("circuitlab")


@dataclass
class EvalContext:
    """What an evaluation callback sees. It returns a dict of extra metrics (or None)."""

    step: int
    tokens: int
    model: Transformer
    data: TokenData
    run_dir: Path
    metrics: dict = field(default_factory=dict)


Callback = Callable[[EvalContext], "dict | None"]


def sample_windows(tokens: np.ndarray, n: int, n_ctx: int, rng: np.random.Generator, bos: bool) -> torch.Tensor:
    """n random windows of the token stream, each n_ctx long; with bos, BOS + (n_ctx - 1) stream tokens."""
    length = n_ctx - 1 if bos else n_ctx
    offsets = rng.integers(0, len(tokens) - length + 1, size=n)
    windows = np.asarray(tokens[offsets[:, None] + np.arange(length)], dtype=np.int64)
    if bos:
        windows = np.concatenate([np.full((n, 1), BOS_ID, dtype=np.int64), windows], axis=1)
    return torch.from_numpy(windows)


def batch_at(data: TokenData, cfg: TrainConfig, n_ctx: int, step: int) -> torch.Tensor:
    return sample_windows(data.train, cfg.batch_size, n_ctx, np.random.default_rng([cfg.seed, step]), cfg.bos)


def eval_windows(data: TokenData, cfg: TrainConfig, n_ctx: int) -> torch.Tensor:
    """A fixed set of held-out windows, the same at every evaluation."""
    return sample_windows(data.val, cfg.eval_windows, n_ctx, np.random.default_rng([cfg.seed, 2**31 - 1]), cfg.bos)


@torch.no_grad()
def evaluate(model: Transformer, windows: torch.Tensor, batch_size: int = 32) -> float:
    chunks = windows.split(batch_size)
    losses = [model(c.to(model.device), return_type="loss").item() for c in chunks]
    return float(np.average(losses, weights=[len(c) for c in chunks]))


def check_data(data: TokenData, n_ctx: int) -> None:
    for name, stream in (("training", data.train), ("held-out", data.val)):
        if len(stream) < n_ctx:
            raise CircuitlabError(
                f"the {name} split has {len(stream)} tokens, fewer than the context n_ctx={n_ctx}: "
                f"use a smaller --n-ctx or more text"
            )


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (nanoGPT's grouping), so biases, LayerNorm and smear alpha are not decayed."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one multi-tensor kernel per step instead of a loop over parameters (CPU and CUDA).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def _write_run_json(out: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, data: TokenData) -> None:
    meta = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "data": data.info}
    atomic_write_text(out / "run.json", json.dumps(meta, indent=2))


def _start(out: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, data: TokenData, resume: bool):
    """Create the run or reopen it for --resume. Returns (model, optimizer, start step, loop state)."""
    exists = (out / "run.json").exists()
    if exists and not resume:
        raise CircuitlabError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if exists:
        saved = Run.open(out)
        if saved.config != model_cfg:
            asked = model_cfg.to_dict()
            diff = {k: (v, asked[k]) for k, v in saved.config.to_dict().items() if asked[k] != v}
            raise CircuitlabError(f"cannot resume {out}: its model config differs ({diff}); drop those flags or use another --out")
        if saved.tokenizer is not None and saved.tokenizer.to_str() != data.tokenizer.to_str():
            raise CircuitlabError(f"cannot resume {out}: the corpus or tokenizer changed since it was trained; use the same corpus or another --out")
    else:
        if out.exists() and any(out.iterdir()):
            raise CircuitlabError(f"{out} exists and is not empty but holds no run: choose an empty or new --out")
        out.mkdir(parents=True, exist_ok=True)
        data.tokenizer.save(str(out / "tokenizer.json"))
    _write_run_json(out, model_cfg, train_cfg, data)

    device = torch.device(train_cfg.device)
    step = optimizer_step(out) if exists else None
    if step is not None:
        model, _ = load_checkpoint(checkpoint_path(out, step), model_cfg, device)
        optimizer = make_optimizer(model, train_cfg)
        extra = load_optimizer(out, optimizer, model)
        # Rows logged after the checkpoint we resume from are redone: drop them so the log has no duplicates.
        rows = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] <= step]
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        log.info("resuming %s from step %d", out, step)
        return model, optimizer, step, extra
    # A new run, or one stopped before its first optimizer save: start from the (deterministic) initialisation.
    atomic_write_text(out / "metrics.jsonl", "")
    model = Transformer(model_cfg).to(device)
    return model, make_optimizer(model, train_cfg), 0, {}


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: TokenData,
    out: str | Path,
    resume: bool = False,
    callbacks: list[Callback] = (),
    progress: bool = True,
    stop_at: int | None = None,
) -> Run:
    """Train and return the Run. `stop_at` ends early at that step (as an interruption would), leaving a resumable run."""
    out = Path(out)
    if data.tokenizer.get_vocab_size() != model_cfg.d_vocab:
        raise CircuitlabError(
            f"the tokenizer has {data.tokenizer.get_vocab_size()} tokens but the model's d_vocab is {model_cfg.d_vocab}"
        )
    check_data(data, model_cfg.n_ctx)
    torch.manual_seed(train_cfg.seed)
    model, optimizer, start, state = _start(out, model_cfg, train_cfg, data, resume)
    total = train_cfg.total_steps(model_cfg.n_ctx)
    ckpt_steps = set(train_cfg.checkpoint_steps(total))
    last = min(total, stop_at) if stop_at is not None else total
    tokens_per_step = train_cfg.batch_size * model_cfg.n_ctx
    device = model.device
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if train_cfg.autocast == "bf16" else nullcontext())
    val = eval_windows(data, train_cfg, model_cfg.n_ctx)
    flops_per_token = train_flops_per_token(model_cfg)
    peak = peak_matmul_flops(str(device))
    last_good = start

    if start == 0:
        save_checkpoint(out, model, 0, 0)
    bar = _Progress(total, start, tokens_per_step) if progress else None
    recent: list[float] = state.get("recent_train_losses", [])  # since the last evaluation
    t_window, tokens_window = time.perf_counter(), 0
    metrics_file = (out / "metrics.jsonl").open("a")

    def log_eval(step: int) -> None:
        nonlocal t_window, tokens_window
        dt = time.perf_counter() - t_window
        tps = tokens_window / dt if tokens_window else 0.0
        row = {
            "step": step, "tokens": step * tokens_per_step,
            "train_loss": float(np.mean(recent)) if recent else None,
            "heldout_loss": evaluate(model, val),
            "lr": train_cfg.lr_at(max(step - 1, 0), total), "tokens_per_s": round(tps, 1),
            "mfu": round(tps * flops_per_token / peak, 4),
        }
        for cb in callbacks:
            row.update(cb(EvalContext(step, step * tokens_per_step, model, data, out, row)) or {})
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        recent.clear()
        if bar:
            bar.note(row)
        t_window, tokens_window = time.perf_counter(), 0

    try:
        if start == 0:
            log_eval(0)
        for step in range(start, last):
            lr = train_cfg.lr_at(step, total)
            for g in optimizer.param_groups:
                g["lr"] = lr
            tokens = batch_at(data, train_cfg, model_cfg.n_ctx, step).to(device)
            with amp:
                loss = model(tokens, return_type="loss")
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip or math.inf)
            loss_value = loss.item()
            if not (math.isfinite(loss_value) and torch.isfinite(grad_norm)):
                raise CircuitlabError(
                    f"training diverged at step {step}: loss {loss_value}, gradient norm {grad_norm.item()}; "
                    f"the last good checkpoint (step {last_good}) is kept in {out}/checkpoints: "
                    "lower --lr or lengthen --warmup-steps and train again"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            recent.append(loss_value)
            tokens_window += tokens_per_step
            done = step + 1
            if bar:
                bar.advance(loss_value)
            # Checkpoint before evaluating, so what a callback does can never reach a checkpoint.
            if done in ckpt_steps or done == last:
                save_checkpoint(out, model, done, done * tokens_per_step)
                save_optimizer(out, optimizer, model, done, {"recent_train_losses": recent})
                last_good = done
            if done % train_cfg.eval_every == 0 or done == total:
                log_eval(done)
    finally:
        metrics_file.close()
        if bar:
            bar.stop()
    return Run.open(out)


class _Progress:
    """A rich progress bar with tokens/s and ETA; evaluation rows are printed above it."""

    def __init__(self, total: int, start: int, tokens_per_step: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.tokens_per_step = tokens_per_step
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TextColumn("{task.fields[tps]} tok/s"), TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        )
        self.task = self.progress.add_task("train", total=total, completed=start, tps="-", loss="-")
        self.progress.start()
        self.t0, self.n = time.perf_counter(), 0

    def advance(self, loss: float) -> None:
        self.n += 1
        tps = self.n * self.tokens_per_step / (time.perf_counter() - self.t0)
        self.progress.update(self.task, advance=1, tps=f"{tps:,.0f}", loss=f"{loss:.3f}")

    def note(self, row: dict) -> None:
        train = f"{row['train_loss']:.3f}" if row["train_loss"] is not None else "-"
        self.progress.console.print(
            f"step {row['step']:>7}  tokens {row['tokens']:>11,}  train {train}  held-out {row['heldout_loss']:.3f}"
            f"  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s  MFU {row['mfu']:.1%}"
        )

    def stop(self) -> None:
        self.progress.stop()

"""Training configuration: the one loop's optimiser, schedule, length, evaluation and checkpoint settings."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from circuitlab.errors import CircuitlabError
from circuitlab.results import strict_config


@dataclass
class TrainConfig:
    batch_size: int = 8
    lr: float = 1e-2
    warmup_steps: int = 200
    # False: step s of the warm-up has lr * (s + 1) / warmup_steps; True: lr * min(s / warmup_steps, 1), so the
    # first update has lr 0 (torch's LambdaLR as the grokking paper's code uses it)
    warmup_from_zero: bool = False
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.01
    decay: Literal["matrices", "all"] = "matrices"  # matrices: not biases, LayerNorm, smear alpha (nanoGPT's grouping)
    fused_optimizer: bool = True  # torch's fused AdamW kernel (False: its per-parameter loop, torch's default)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    max_tokens: int = 20_000_000
    max_steps: int = 0  # 0: derived from max_tokens
    eval_every: int = 250
    eval_windows: int = 64  # held-out windows per evaluation
    checkpoint_every: int = 1000
    log_checkpoints: int = 40  # log-spaced checkpoints between step 1 and the last step (dense early training)
    bos: bool = True  # every window starts with the BOS/end-of-text token
    heldout_fraction: float = 0.02
    seed: int = 0
    device: str = "cpu"
    autocast: Literal["none", "bf16"] = "none"

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "eval_every", "eval_windows", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a finite number > 0 (got {self.lr})")
        for name in ("weight_decay", "grad_clip", "min_lr_ratio", "warmup_steps", "max_tokens", "max_steps",
                     "log_checkpoints", "seed"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be a finite number >= 0 (got {v})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule must be 'cosine' or 'constant' (got {self.schedule!r})")
        if self.decay not in ("matrices", "all"):
            problems.append(f"decay must be 'matrices' or 'all' (got {self.decay!r})")
        if self.autocast not in ("none", "bf16"):
            problems.append(f"autocast must be 'none' or 'bf16' (got {self.autocast!r})")
        if not 0 < self.heldout_fraction < 1:
            problems.append("heldout_fraction must be between 0 and 1")
        if self.max_steps <= 0 and self.max_tokens <= 0:
            problems.append("give max_tokens or max_steps > 0")
        if problems:
            raise CircuitlabError("invalid training config: " + "; ".join(problems))

    def total_steps(self, n_ctx: int) -> int:
        return self.max_steps if self.max_steps > 0 else math.ceil(self.max_tokens / (self.batch_size * n_ctx))

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up over warmup_steps, then constant or cosine down to lr * min_lr_ratio."""
        if self.warmup_from_zero and 0 < self.warmup_steps and step <= self.warmup_steps:
            return self.lr * min(step / self.warmup_steps, 1.0)
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def checkpoint_steps(self, total: int) -> list[int]:
        """Step 0, log-spaced steps (dense early, for phase-change analysis), every checkpoint_every, and the last."""
        log_steps = np.unique(np.round(np.geomspace(1, total, self.log_checkpoints)).astype(int)) if total >= 1 else []
        regular = range(self.checkpoint_every, total + 1, self.checkpoint_every)
        return sorted({0, total, *map(int, log_steps), *regular})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return strict_config(cls, d, "training")

"""What the one training loop trains on: a small task interface and its three kinds.

- `LanguageModelTask`: next-token loss on random windows of a tokenized corpus (Elhage et al. 2021; Olsson et al.
  2022). Batch of step s: windows at offsets drawn from a generator seeded with (seed, s).
- `ModularAdditionTask`: "a b =" -> (a + b) mod p, full batch, float64 loss on the last position only, through
  `last_position_logits` (Nanda et al. 2023). Every step is an epoch over the same training set.
- `SequenceTaskTraining`: a synthetic task of `data.synthetic` (masked next-token loss; fresh sequences drawn from a
  generator seeded with (seed, s)).

Every batch is a pure function of (seed, step), so a resumed run sees exactly the batches the uninterrupted run
saw. A task also names itself for run.json (`spec`), so a run can be reopened and a resume on other data refused.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from circuitlab.data.modular import modular_addition
from circuitlab.data.synthetic import SequenceTask
from circuitlab.data.tokens import TokenData
from circuitlab.data.windows import sample_windows
from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig
from circuitlab.model.last_position import last_position_logits
from circuitlab.results import atomic_write_text
from circuitlab.model.loss import (masked_accuracy, masked_cross_entropy, modular_accuracy, modular_loss,
                                   modular_loss_and_accuracy)
from circuitlab.training.config import TrainConfig
from circuitlab.training.flops import train_flops_per_token

HELDOUT = 2**31 - 1  # the "step" whose draw is the held-out set, never a training step


def step_generator(seed: int, step: int) -> torch.Generator:
    """A torch generator seeded from (seed, step) alone."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


class Task:
    """The interface of the training loop. `prepare` is called once before training with the run's configs."""

    kind: str = ""

    def spec(self) -> dict:
        """What identifies the data (saved as run.json's "task"; a resume with another spec is refused)."""
        raise NotImplementedError

    def info(self) -> dict:
        """A summary of the data for run.json's "data" (sizes, caches)."""
        return {}

    def check(self, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
        """Raise a CircuitlabError before anything is written when the data cannot train this model."""

    def prepare(self, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> None:
        self.model_cfg, self.train_cfg, self.device = model_cfg, train_cfg, device

    def tokens_per_step(self) -> int:
        raise NotImplementedError

    def flops_per_token(self) -> int | None:
        """Training FLOPs per token for MFU (PaLM's estimate over every position), None where it does not apply."""
        return train_flops_per_token(self.model_cfg)

    def batch(self, step: int):
        raise NotImplementedError

    def loss(self, model, batch) -> Tensor:
        raise NotImplementedError

    def batch_rows(self, train_cfg: TrainConfig) -> int:
        """Rows of every training batch (data-parallel ranks each take an equal share)."""
        return train_cfg.batch_size

    @torch.no_grad()
    def evaluate(self, model, step: int) -> dict:
        """Held-out metrics for the metrics row of an evaluation step."""
        return {}

    def write(self, out) -> None:
        """Files the run keeps beside its checkpoints (the tokenizer)."""

    def check_resume(self, run) -> None:
        """Raise when the run in `out` was trained on other data than this task's."""
        saved = run.task
        if saved and saved != self.spec():
            diff = {k: (saved.get(k), v) for k, v in self.spec().items() if saved.get(k) != v}
            raise CircuitlabError(f"cannot resume {run.path}: its task differs ({diff}); use the same data or "
                                  "another --out")


class LanguageModelTask(Task):
    kind = "language_model"

    def __init__(self, data: TokenData):
        self.data = data

    def spec(self) -> dict:
        return {"kind": self.kind, "corpus": self.data.info.get("corpus", "stdlib")}

    def info(self) -> dict:
        return self.data.info

    def check(self, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
        if self.data.tokenizer.get_vocab_size() != model_cfg.d_vocab:
            raise CircuitlabError(f"the tokenizer has {self.data.tokenizer.get_vocab_size()} tokens but the model's "
                                  f"d_vocab is {model_cfg.d_vocab}")
        for name, stream in (("training", self.data.train), ("held-out", self.data.val)):
            if len(stream) < model_cfg.n_ctx:
                raise CircuitlabError(f"the {name} split has {len(stream)} tokens, fewer than the context "
                                      f"n_ctx={model_cfg.n_ctx}: use a smaller --n-ctx or more text")

    def prepare(self, model_cfg, train_cfg, device) -> None:
        super().prepare(model_cfg, train_cfg, device)
        self.val = eval_windows(self.data, train_cfg, model_cfg.n_ctx)

    def tokens_per_step(self) -> int:
        return self.train_cfg.batch_size * self.model_cfg.n_ctx

    def batch(self, step: int) -> Tensor:
        return batch_at(self.data, self.train_cfg, self.model_cfg.n_ctx, step).to(self.device)

    def loss(self, model, batch: Tensor) -> Tensor:
        return model(batch, return_type="loss")

    @torch.no_grad()
    def evaluate(self, model, step: int) -> dict:
        chunks = self.val.split(32)
        losses = [model(c.to(model.device), return_type="loss").item() for c in chunks]
        return {"heldout_loss": float(np.average(losses, weights=[len(c) for c in chunks]))}

    def write(self, out) -> None:
        # Written by us, atomically: the tokenizers library's own save raises a bare Exception on a full disk and
        # can leave half a file.
        atomic_write_text(out / "tokenizer.json", self.data.tokenizer.to_str(pretty=True))

    def check_resume(self, run) -> None:
        if run.checkpoints and run.tokenizer is None:  # without it a changed corpus would go unnoticed
            raise CircuitlabError(f"cannot resume {run.path}: its tokenizer.json is missing, so the corpus cannot be "
                                  "checked against the one it was trained on; restore the file or use another --out")
        if run.tokenizer is not None and run.tokenizer.to_str() != self.data.tokenizer.to_str():
            raise CircuitlabError(f"cannot resume {run.path}: the corpus or tokenizer changed since it was trained; "
                                  "use the same corpus or another --out")


def batch_at(data: TokenData, cfg: TrainConfig, n_ctx: int, step: int) -> Tensor:
    """The training batch of `step`: windows at offsets from a generator seeded with (seed, step)."""
    return sample_windows(data.train, cfg.batch_size, n_ctx, np.random.default_rng([cfg.seed, step]), cfg.bos)


def eval_windows(data: TokenData, cfg: TrainConfig, n_ctx: int) -> Tensor:
    """A fixed set of held-out windows, the same at every evaluation."""
    return sample_windows(data.val, cfg.eval_windows, n_ctx, np.random.default_rng([cfg.seed, HELDOUT]), cfg.bos)


def _versions(model) -> tuple[int, ...]:
    """The in-place version counter of every parameter: any change to one (an optimizer step) changes the tuple."""
    return tuple(p._version for p in model.parameters())


class ModularAdditionTask(Task):
    """Full-batch modular addition. Metrics rows carry the epoch (= step) and the loss and accuracy of the whole
    training and test sets after the step."""

    kind = "modular_addition"

    def __init__(self, p: int = 113, frac: float = 0.3, seed: int = 0):
        self.p, self.frac, self.seed = p, frac, seed
        self.data = modular_addition(p, frac, seed)
        self._kept = None  # (model, inputs, parameter versions, loss) an evaluation lends to the next step

    def spec(self) -> dict:
        return {"kind": self.kind, "p": self.p, "frac": self.frac, "seed": self.seed}

    def info(self) -> dict:
        return {"n_train": len(self.data.train), "n_test": len(self.data.test)}

    def batch_rows(self, train_cfg: TrainConfig) -> int:
        return len(self.data.train)  # full batch

    def check(self, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
        if len(self.data.train) == 0 or len(self.data.test) == 0:
            raise CircuitlabError(f"frac {self.frac} of {self.p}^2 pairs leaves {len(self.data.train)} training and "
                                  f"{len(self.data.test)} test pairs: choose a frac that leaves both non-empty")
        if model_cfg.d_vocab != self.p + 1 or model_cfg.n_ctx != 3:
            raise CircuitlabError(f"modular addition mod {self.p} needs d_vocab {self.p + 1} and n_ctx 3 "
                                  f"(got {model_cfg.d_vocab} and {model_cfg.n_ctx})")

    def prepare(self, model_cfg, train_cfg, device) -> None:
        super().prepare(model_cfg, train_cfg, device)
        d = self.data
        self.x_train, self.y_train = d.tokens[d.train].to(device), d.labels[d.train].to(device)
        self.x_test, self.y_test = d.tokens[d.test].to(device), d.labels[d.test].to(device)

    def tokens_per_step(self) -> int:
        return len(self.data.train)  # examples per epoch

    def flops_per_token(self) -> None:
        return None  # the last-position step computes a fraction of the all-position FLOPs

    def batch(self, step: int):
        return self.x_train, self.y_train

    def loss(self, model, batch) -> Tensor:
        x, y = batch
        kept, self._kept = self._kept, None
        if (kept is not None and kept[0] is model and kept[1] is x and kept[2] == _versions(model)
                and not torch.is_autocast_enabled(x.device.type)):
            return kept[3]  # the loss `evaluate` computed on these very weights and inputs, with its graph
        return modular_loss(last_position_logits(model, x), y, self.p)  # the accuracy only at evaluations

    def evaluate(self, model, step: int) -> dict:
        """Loss and accuracy of the training and test sets. The training set's forward is the one the next step's
        `loss` needs (the same weights and inputs, full batch): called with gradients on, as the training loop
        calls it, it keeps that loss with its graph, and `loss` takes it while no parameter has changed since
        (their version counters; any in-place change, an optimizer step or a callback's, means recomputing). The
        same kernels on the same inputs: the run's numbers are those of computing it twice, with one forward fewer
        per evaluation (about a third of a step; `benchmarks/grokking_step.py` times the loop both ways)."""
        self._kept = None
        train = modular_loss(logits := last_position_logits(model, self.x_train), self.y_train, self.p)
        if train.requires_grad:
            self._kept = (model, self.x_train, _versions(model), train)
        train_acc = modular_accuracy(logits.detach(), self.y_train, self.p)
        with torch.no_grad():
            test_loss, test_acc = modular_loss_and_accuracy(last_position_logits(model, self.x_test), self.y_test, self.p)
        return {"epoch": step, "train_loss": float(train.detach()), "train_acc": train_acc, "test_loss": float(test_loss),
                "test_acc": test_acc}


class SequenceTaskTraining(Task):
    """A synthetic sequence task: masked next-token loss on fresh sequences; held-out loss and accuracy on a fixed
    set of `heldout` sequences."""

    kind = "sequences"

    def __init__(self, task: SequenceTask, heldout: int = 256):
        self.task, self.heldout = task, heldout

    def spec(self) -> dict:
        return {"kind": self.kind, "name": self.task.name, "settings": self.task.settings(), "heldout": self.heldout}

    def check(self, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
        if model_cfg.d_vocab != self.task.d_vocab or model_cfg.n_ctx != self.task.n_ctx:
            raise CircuitlabError(f"task {self.task.name} needs d_vocab {self.task.d_vocab} and n_ctx "
                                  f"{self.task.n_ctx} (got {model_cfg.d_vocab} and {model_cfg.n_ctx})")

    def prepare(self, model_cfg, train_cfg, device) -> None:
        super().prepare(model_cfg, train_cfg, device)
        tokens, mask = self.task.sample(self.heldout, step_generator(train_cfg.seed, HELDOUT))[:2]
        self.held = tokens.to(device), mask.to(device)

    def tokens_per_step(self) -> int:
        return self.train_cfg.batch_size * self.task.n_ctx

    def batch(self, step: int):
        tokens, mask = self.task.sample(self.train_cfg.batch_size, step_generator(self.train_cfg.seed, step))[:2]
        return tokens.to(self.device), mask.to(self.device)

    def loss(self, model, batch) -> Tensor:
        tokens, mask = batch
        return masked_cross_entropy(model(tokens), tokens, mask)

    @torch.no_grad()
    def evaluate(self, model, step: int) -> dict:
        return {"heldout_loss": float(self.loss(model, self.held)), "heldout_accuracy": masked_accuracy(model, *self.held)}

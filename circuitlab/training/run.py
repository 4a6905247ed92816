"""A training run directory, the one run format of every task, as analyses see it.

RUN/run.json          model config, training config, task (what identifies the data), data summary
RUN/tokenizer.json    the run's tokenizer (language-model tasks; Hugging Face `tokenizers` format)
RUN/metrics.jsonl     one JSON row per evaluation
RUN/checkpoints/      step-XXXXXXXXX.safetensors
RUN/optimizer.safetensors
RUN/stopped.json      only in a run an evaluation callback ended early: {"step", "tokens", "reason"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig, Transformer
from circuitlab.training.checkpoints import checkpoint_path, list_checkpoints, load_checkpoint
from circuitlab.training.config import TrainConfig


def read_metrics(path: Path) -> list[dict]:
    """Rows of metrics.jsonl; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    rows = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise CircuitlabError(f"{path} cannot be read ({e.strerror})") from None
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and all(  # anything else is a damaged line
                isinstance(row.get(k), (int, float, type(None))) and not isinstance(row.get(k), bool)
                for k in NUMERIC_FIELDS):
            rows.append(row)
    return rows


# Fields the training loop and its tasks write as numbers (or null): a row holding anything else there is damaged.
NUMERIC_FIELDS = ("tokens", "train_loss", "lr", "tokens_per_s", "mfu", "heldout_loss", "test_loss", "train_acc",
                  "test_acc")


STOPPED_NAME = "stopped.json"

# Training settings that may change when a run is resumed: they do not change the trajectory up to the resume point.
RESUMABLE = frozenset({"max_tokens", "max_steps", "eval_every", "checkpoint_every", "log_checkpoints", "device"})


def resume_clash(run: "Run", model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    """What differs between a saved run's settings and the ones asked for, outside RESUMABLE ('' when nothing):
    the one check every command that resumes a run goes through."""
    saved_m, asked_m = run.config.to_dict(), model_cfg.to_dict()
    saved_t, asked_t = run.train_config.to_dict(), train_cfg.to_dict()
    diff = [(k, saved_m[k], asked_m[k]) for k in saved_m if saved_m[k] != asked_m[k]]
    diff += [(k, saved_t[k], asked_t[k]) for k in saved_t if k not in RESUMABLE and saved_t[k] != asked_t[k]]
    return ", ".join(f"--{k.replace('_', '-')} was {a!r}, now {b!r}" for k, a, b in diff)


def finished_run(out: Path | str, model_cfg: ModelConfig, train_cfg: TrainConfig, task: dict | None = None):
    """The run in `out` if it is finished with exactly these settings (and task spec, when given), to be reused
    as it is; else None (then `train(..., resume=True)` continues it, or refuses other settings)."""
    if not (Path(out) / "run.json").exists():
        return None
    run = Run.open(out)
    same = run.config == model_cfg and run.train_config == train_cfg and (task is None or run.task == task)
    return run if run.finished and same else None


@dataclass
class Run:
    path: Path
    config: ModelConfig
    train_config: TrainConfig
    data: dict
    task: dict

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        meta = path / "run.json"
        if not meta.exists():
            raise CircuitlabError(f"{path} is not a circuitlab run (no run.json): train one with `circuitlab train --out {path}`")
        try:
            d = json.loads(meta.read_text())
            # runs written before tasks existed are language-model runs
            task = d.get("task") or {"kind": "language_model", "corpus": d.get("data", {}).get("corpus", "stdlib")}
            return cls(path, ModelConfig.from_dict(d["model"]), TrainConfig.from_dict(d["train"]), d.get("data", {}),
                       task)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
            raise CircuitlabError(f"{meta} is damaged ({str(e)[:120]}): the run cannot be read; train it again") from None
        except OSError as e:
            raise CircuitlabError(f"{meta} cannot be read ({e.strerror})") from None

    @cached_property
    def tokenizer(self) -> Tokenizer | None:
        p = self.path / "tokenizer.json"
        if not p.exists():
            return None
        try:
            return Tokenizer.from_file(str(p))
        except Exception as e:  # the tokenizers library raises plain Exceptions for a damaged file
            raise CircuitlabError(f"{p} is damaged ({str(e).splitlines()[0][:120]}): the run's tokenizer cannot be "
                                  "read; restore it or train the run again") from None

    @property
    def metrics(self) -> list[dict]:
        return read_metrics(self.path / "metrics.jsonl")

    @property
    def checkpoints(self) -> list[int]:
        return list_checkpoints(self.path)

    @property
    def total_steps(self) -> int:
        return self.train_config.total_steps(self.config.n_ctx)

    @property
    def stopped(self) -> dict | None:
        """{"step", "tokens", "reason"} when an evaluation callback ended the run early (e.g. a phase change that
        has settled), else None."""
        p = self.path / STOPPED_NAME
        if not p.exists():
            return None
        try:
            d = json.loads(p.read_text())
            return {"step": int(d["step"]), "tokens": int(d["tokens"]), "reason": str(d["reason"])}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CircuitlabError(f"{p} is damaged ({e}): delete it and resume the run to train it to its budget") from None

    @property
    def finished(self) -> bool:
        """Whether the run has its last checkpoint, or the checkpoint it was stopped at (an interrupted run is
        resumed with `train(..., resume=True)`)."""
        steps = self.checkpoints
        if not steps:
            return False
        stop = self.stopped
        return steps[-1] >= self.total_steps or (stop is not None and steps[-1] >= stop["step"])

    def with_flags(self, model_flags: dict, train_flags: dict) -> tuple[ModelConfig, TrainConfig]:
        """The run's configs with the given fields replaced (what a resume was asked for; `train` then refuses the
        ones outside RESUMABLE). A new --max-tokens without --max-steps replaces a saved step count."""
        train = self.train_config.to_dict() | train_flags
        if "max_tokens" in train_flags and "max_steps" not in train_flags:
            train["max_steps"] = 0
        return ModelConfig(**(self.config.to_dict() | model_flags)), TrainConfig(**train)

    def tokens(self):
        """The run's tokenized corpus (TokenData: .train, .val), from the token cache, re-tokenized if it is gone."""
        from circuitlab.data import corpus_kwargs, load_corpus, prepare_tokens

        if self.task.get("kind") != "language_model":
            raise CircuitlabError(f"run {self.path} is a {self.task.get('kind')} run: it has no corpus")
        spec = self.data.get("corpus", "stdlib")
        data = prepare_tokens(load_corpus(**corpus_kwargs(spec)), self.config.d_vocab, self.train_config.heldout_fraction)
        if self.tokenizer is not None and data.tokenizer.to_str() != self.tokenizer.to_str():
            raise CircuitlabError(f"the corpus {spec!r} has changed since run {self.path} was trained: its tokens cannot be rebuilt")
        return data

    def model(self, step: int | None = None, device: str = "cpu") -> Transformer:
        """The model at `step` (a saved checkpoint), the latest by default."""
        steps = self.checkpoints
        if not steps:
            raise CircuitlabError(f"run {self.path} has no checkpoints yet: train it (or --resume) first")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            near = min(steps, key=lambda s: abs(s - step))
            raise CircuitlabError(f"run {self.path} has no checkpoint at step {step}: the nearest is {near} (`circuitlab info {self.path}` lists them)")
        return load_checkpoint(checkpoint_path(self.path, step), self.config, device)[0]

"""Presets, in one shape everywhere.

A `Preset` is one trained model: a model (ModelConfig fields), its training (TrainConfig fields), its task settings,
and what it changes relative to the paper it reproduces. `circuitlab train --preset` takes the attention-only sizes
below. An `ExperimentPreset` is what every experiment's registry holds (`experiments/<paper>/presets.py`): the
`Preset`s of the models it trains, its own measuring settings, and what differs from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig
from circuitlab.training.config import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    about: str = ""
    differs: tuple[str, ...] = ()

    def configs(self, model: dict | None = None, train: dict | None = None) -> tuple[ModelConfig, TrainConfig]:
        """The preset's configs, with fields overridden."""
        return ModelConfig(**(self.model | (model or {}))), TrainConfig(**(self.train | (train or {})))

    def but(self, name: str | None = None, model: dict | None = None, train: dict | None = None,
            task: dict | None = None, **kw) -> "Preset":
        """A copy with some fields overridden (dicts are merged)."""
        return Preset(name or self.name, self.model | (model or {}), self.train | (train or {}),
                      self.task | (task or {}), kw.get("about", self.about), tuple(kw.get("differs", self.differs)))


@dataclass(frozen=True)
class ExperimentPreset:
    """An experiment's preset, the same shape for every experiment: the models it trains (each a `Preset`), the
    experiment's own measuring settings, and what the preset changes relative to the paper."""

    name: str
    models: dict[str, Preset] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    differs: tuple[str, ...] = ()

    def but(self, **kw) -> "ExperimentPreset":
        """A copy with fields replaced (`settings` is merged)."""
        settings = self.settings | kw.pop("settings", {})
        return ExperimentPreset(kw.pop("name", self.name), kw.pop("models", self.models), settings,
                                tuple(kw.pop("differs", self.differs)))


def choose(presets: dict[str, Any], name: str, what: str = "preset") -> Any:
    """presets[name], or one clear line listing the choices."""
    try:
        return presets[name]
    except KeyError:
        raise CircuitlabError(f"unknown {what} {name!r}: choose one of {', '.join(presets)}") from None


def _attn(n_layers: int, about: str) -> Preset:
    # Sizes scaled down from the Framework paper's (12 heads of 64, vocab ~50k) so that they train on a laptop CPU;
    # shortformer positions and a BOS token at the start of every window as in the papers. See
    # ../shared/reference/calibration.md for why lr 1e-2 and batch 8 x 128.
    return Preset(
        f"attn{n_layers}",
        model=dict(n_layers=n_layers, d_model=128, n_heads=8, d_head=16, n_ctx=128, d_vocab=2048,
                   positional_embedding_type="shortformer"),
        train=dict(batch_size=8, lr=1e-2, warmup_steps=200, max_tokens=20_000_000),
        about=about,
    )


PRESETS: dict[str, Preset] = {
    "attn0": _attn(0, "zero-layer: logits = W_E W_U, a bigram table"),
    "attn1": _attn(1, "one attention layer: bigrams + skip-trigrams"),
    "attn2": _attn(2, "two attention layers: composition, induction heads"),
    "attn3": _attn(3, "three attention layers"),
    "attn8": _attn(8, "eight attention layers"),
}


def get_preset(name: str) -> Preset:
    return choose(PRESETS, name)

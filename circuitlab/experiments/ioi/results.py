"""Typed results of the IOI experiment (Wang et al. 2022), as OUT/results.json holds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitlab.experiments.claims import Claim
from circuitlab.heads import Head
from circuitlab.patching.circuit import CircuitEvaluation
from circuitlab.patching.common import PatchingResult
from circuitlab.results import Result


@dataclass
class Behaviour(Result):
    """The metric on n prompts: logit(IO) - logit(S) at END (mean, standard deviation, every prompt's value for the
    histogram), the share with IO > S, the mean probability of IO; corrupted: the mean logit difference (of the
    same answers) on the p_ABC prompts."""

    n: int
    logit_diff: float
    logit_diff_std: float
    io_above_s: float
    io_probability: float
    corrupted_logit_diff: float
    per_prompt: list[float]


@dataclass
class PathStep(Result):
    """One step of path patching backwards from the logits (appendix B): senders into `receivers` (at `site`, at
    each prompt's `position`). screen: the first-order estimate over every head; exact: exact path patching of the
    `top` screened heads (the others keep the clean metric); effect: exact relative change (patched - clean) / clean
    per confirmed head; selected: heads whose |effect| passes the threshold."""

    name: str
    receivers: list[Head]
    site: str
    position: str
    screen: PatchingResult
    exact: PatchingResult
    effect: dict[str, float]
    selected: list[Head]
    agreement: float | None = None


@dataclass
class IOIResults(Result):
    """model: its label; about: what it is (quantised, instruct-tuned, architecture, ...); gpt2_small: whether the
    paper's head numbers are judged; vocabulary: names/places/objects kept and dropped; attention: per head [L][H]
    the mean attention of END -> IO, END -> S1, END -> S2, S2 -> S1, S2 -> S1+1, S1+1 -> S1 and the attention
    uniform attention would give those queries; copy: each name mover's (and negative one's) copy score; backup_rise:
    how much each head's direct effect rose (over the clean logit difference) with the name movers knocked out."""

    experiment: str
    preset: str
    model: str
    about: list[str]
    gpt2_small: bool
    settings: dict
    config: dict
    vocabulary: dict
    behaviour: Behaviour
    steps: list[PathStep]
    classes: dict[str, list[Head]]
    attention: dict[str, list[list[float]]]
    uniform: dict[str, float]
    copy: dict[str, float]
    evaluation: CircuitEvaluation
    backup_rise: dict[str, float] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @property
    def circuit(self) -> list[Head]:
        return sorted({h for heads in self.classes.values() for h in heads})

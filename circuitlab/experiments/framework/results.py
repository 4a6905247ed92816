"""Typed results of the Framework experiment (Elhage et al. 2021): one model's analysis, as `circuitlab analyze`
writes it to RUN/analysis.json and the claims, tables and report read it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from circuitlab.circuits.attribution import InductionMechanism
from circuitlab.circuits.bigram import BigramAgreement
from circuitlab.circuits.competition import SoftmaxCompetition
from circuitlab.circuits.composition import CompositionEdge
from circuitlab.circuits.skip_trigrams import SkipTrigramBug, SkipTrigramTable
from circuitlab.circuits.term_importance import TermImportance
from circuitlab.heads import Head
from circuitlab.results import Result


@dataclass
class HeadRow(Result):
    """Every score of one head, and its roles (`circuitlab.heads`). positional/content shares and the attention
    driver exist only for the paper's setting (attention-only, no LayerNorm, no biases)."""

    head: Head
    ov_copying: float
    qk_copying: float
    previous_token: float
    induction: float
    prefix_matching: float
    copying_score: float
    duplicate_token: float
    positional_share: float | None
    content_share: float | None
    attention_driver: str | None
    ov_top1_diagonal: float
    roles: list[str]


@dataclass
class Histogram(Result):
    edges: list[float]
    counts: list[int]

    @classmethod
    def of(cls, values: list[float], lo: float = -1.0, hi: float = 1.0, bins: int = 10) -> "Histogram":
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
        return cls(edges.tolist(), counts.tolist())


@dataclass
class CopyingHeads(Result):
    """How many heads are copying heads (OV eigenvalue statistic above `threshold`), with the histograms."""

    count: int
    of: int
    threshold: float
    ov_histogram: Histogram
    qk_histogram: Histogram


@dataclass
class CompositionSummary(Result):
    """Raw composition scores [layer_from, head_from, layer_to, head_to], the random baseline beside them (the mean
    score of random matrices of the same shapes), and each mode's strongest pairs (raw scores)."""

    random_baseline: float
    k_matrix: torch.Tensor
    q_matrix: torch.Tensor
    v_matrix: torch.Tensor
    q: list[CompositionEdge]
    k: list[CompositionEdge]
    v: list[CompositionEdge]


@dataclass
class MechanismReport(InductionMechanism):
    """An induction head's key decomposition (`InductionMechanism`), with its score, whether it passes the role
    threshold, and the K-composition scores of its strongest sender and of the head carrying its margin."""

    above_threshold: bool
    induction_score: float
    top_k_composition_head: Head
    k_composition: float
    k_composition_with_share_head: float


@dataclass
class SoftmaxCompetitions(Result):
    """The softmax-competition caveat of skip-trigram tables: on a hand-built model, and on the trained one where
    it applies (a one-layer model in the paper's setting)."""

    hand_built: SoftmaxCompetition | None
    trained: SoftmaxCompetition | None


@dataclass
class ModelAnalysis(Result):
    """Every analysis of the Framework paper that applies to one model checkpoint. `seconds`: time per analysis."""

    run: str
    step: int
    tokens: int
    model: dict
    bigram_agreement: BigramAgreement
    seconds: dict[str, float]
    heads: list[HeadRow] = field(default_factory=list)
    head_score_settings: dict = field(default_factory=dict)
    copying_heads: CopyingHeads | None = None
    skip_trigrams: list[SkipTrigramTable] = field(default_factory=list)
    skip_trigram_bugs: list[SkipTrigramBug] = field(default_factory=list)
    softmax_competition: SoftmaxCompetitions | None = None
    composition: CompositionSummary | None = None
    induction_mechanism: list[MechanismReport] = field(default_factory=list)
    induction_heads_ov_top1_diagonal: float | None = None
    term_importance: TermImportance | None = None

    def head(self, head: Head) -> HeadRow:
        return next(h for h in self.heads if h.head == head)

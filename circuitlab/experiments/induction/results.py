"""Typed results of the induction-heads experiment (Olsson et al. 2022), as OUT/results.json holds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitlab.experiments.claims import Claim
from circuitlab.heads import Head
from circuitlab.induction.ablation import AblationResult
from circuitlab.induction.behaviours import CopyingBehaviour, PatternBehaviour, TranslationBehaviour
from circuitlab.induction.phase import LossBump, Window
from circuitlab.results import Result


@dataclass
class CurvePoint(Result):
    """One checkpoint's headline measurements (the curves of the phase-change plots)."""

    tokens: int
    step: int
    heldout_loss: float
    icl: float
    best_induction: float | None
    best_prefix_matching: float | None
    repeat_first_half_loss: float
    repeat_second_half_loss: float


@dataclass
class TrainLossPoint(Result):
    tokens: int
    train_loss: float


@dataclass
class FinalScores(Result):
    """The last checkpoint's per-head scores ([n_layers][n_heads]), ICL score and held-out loss."""

    induction: list[list[float]] | None
    prefix_matching: list[list[float]] | None
    copying: list[list[float]] | None
    previous_token: list[list[float]] | None
    duplicate_token: list[list[float]] | None
    icl: float
    heldout_loss: float
    tokens: int


@dataclass
class PhaseWindows(Result):
    induction: Window
    icl: Window


@dataclass
class ModelCurves(Result):
    """One model of the experiment: its configs, curves over training, final scores, induction heads and windows;
    stopped: why training stopped before its token budget (the cap), None when it trained to the cap."""

    config: dict
    train: dict
    curve: list[CurvePoint]
    train_loss: list[TrainLossPoint]
    final: FinalScores
    induction_heads: list[Head]
    windows: PhaseWindows
    stopped: str | None = None


@dataclass
class ICLPositions(Result):
    early: int
    late: int
    n_ctx: int
    note: str


@dataclass
class PCAResult(Result):
    """The per-token-loss trajectory over checkpoints on its first two principal components, and its pivot."""

    trajectory: list[list[float]]
    explained_variance: list[float]
    pivot_index: int
    pivot_tokens: int
    tokens: list[int]
    examples: int


@dataclass
class LossByPosition(Result):
    """moments: name -> tokens seen; curves: model -> moment -> loss by token position."""

    moments: dict[str, int]
    curves: dict[str, dict[str, list[float]]]


@dataclass
class AblationPoint(AblationResult):
    step: int
    tokens: int


@dataclass
class Ablations(Result):
    """Pattern-preserving ablations at checkpoints over training, and a full ablation at the end."""

    group: list[Head]
    over_training: list[AblationPoint]
    final_full: AblationResult


@dataclass
class TaskTraining(Result):
    """How a synthetic behaviour task's model was trained (its run under OUT/tasks/NAME)."""

    run: str
    steps: int
    history: list[dict]


@dataclass
class Behaviours(Result):
    """copying is None (with the reason in copying_skipped) when the passage does not fit the context or no head
    was examined."""

    translation: TranslationBehaviour
    translation_training: TaskTraining
    pattern: PatternBehaviour
    pattern_training: TaskTraining
    copying: CopyingBehaviour | None = None
    copying_skipped: str | None = None


@dataclass
class ViewerPrompt(Result):
    """A prompt for the attention viewer: tokens and every head's pattern [layer][head][query][key]."""

    title: str
    tokens: list[str]
    patterns: list


@dataclass
class InductionResults(Result):
    experiment: str
    preset: str
    differs_from_paper: list[str]
    icl_positions: ICLPositions
    models: dict[str, ModelCurves]
    loss_bump: LossBump
    pca: PCAResult
    loss_by_position: LossByPosition
    ablation: Ablations
    behaviours: Behaviours
    attention_viewer: list[ViewerPrompt]
    corpus: str = "stdlib"  # the corpus's id (spec@fingerprint): a reproduce stage is reused only on the same one
    claims: list[Claim] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

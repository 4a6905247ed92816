"""Circuits read from the weights (Elhage et al. 2021) and head scores (Olsson et al. 2022).

Each analysis is a function of a model (and data) returning a small result that serialises to JSON, and runs on a
circuitlab Transformer or a TransformerLens TransformerBridge alike.
"""

from circuitlab.circuits.attribution import (
    InductionMechanism, ScoreSplit, induction_mechanism, positional_content_split,
)
from circuitlab.circuits.bigram import BigramAgreement, bigram_agreement, bigram_counts
from circuitlab.circuits.circuits import (
    copying_statistic, direct_path, ov_circuit, positional_qk_circuit, qk_circuit, top1_diagonal_accuracy, top_entries,
)
from circuitlab.circuits.competition import (
    SoftmaxCompetition, competition_from_table, competition_model, softmax_competition,
)
from circuitlab.circuits.composition import CompositionScores, composition_scores, random_composition_baseline
from circuitlab.circuits.heads import (
    HeadScores, attention_patterns, copying_score, head_scores, induction_and_duplicate_scores, prefix_matching_score,
    previous_token_score, repeated_random_tokens,
)
from circuitlab.circuits.paths import head_results, order_expansion
from circuitlab.circuits.skip_trigrams import (
    SkipTrigramBug, SkipTrigramTable, skip_trigram_bugs, skip_trigram_counts, skip_trigram_table,
)
from circuitlab.circuits.term_importance import TermImportance, term_importance

__all__ = [
    "BigramAgreement", "CompositionScores", "HeadScores", "attention_patterns", "bigram_agreement", "bigram_counts",
    "composition_scores", "copying_statistic", "direct_path", "head_scores", "induction_and_duplicate_scores",
    "ov_circuit", "positional_qk_circuit", "prefix_matching_score", "previous_token_score", "qk_circuit",
    "random_composition_baseline", "repeated_random_tokens",
    "copying_score", "InductionMechanism", "ScoreSplit", "SkipTrigramBug", "SkipTrigramTable", "SoftmaxCompetition", "TermImportance",
    "competition_from_table", "competition_model", "head_results", "induction_mechanism", "order_expansion",
    "positional_content_split", "skip_trigram_bugs", "skip_trigram_counts", "skip_trigram_table",
    "softmax_competition", "term_importance", "top1_diagonal_accuracy", "top_entries",
]

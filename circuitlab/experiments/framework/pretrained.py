"""`circuitlab analyze --model NAME_OR_PATH`: the analyses that apply to a pretrained model with LayerNorm and MLPs
(a TransformerBridge from `circuitlab.load_model`), and the ones that do not, with why.

Done: the head scores of Olsson et al. 2022 (previous-token, duplicate-token, induction, prefix matching; copying
where the vocabulary is small enough), composition scores (Elhage et al. 2021) on the LayerNorm-folded weights the
bridge holds, and, on an indirect-object prompt whose two names are single tokens, direct logit attribution per
head and MLP and the logit lens (LayerNorm-aware, `patching.logit`).
Skipped: the exact path expansion (bigram and skip-trigram tables, term importance) holds only for attention-only
models without LayerNorm, where the logits are a sum of products of weight matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuitlab.circuits.composition import CompositionEdge, composition_scores
from circuitlab.circuits.heads import (
    copying_score, induction_and_duplicate_scores, prefix_matching_score, previous_token_score,
    repeated_random_tokens,
)
from circuitlab.heads import Head, induction_heads
from circuitlab.patching.logit import LogitAttribution, LogitLens, direct_logit_attribution, logit_lens
from circuitlab.results import Result

PROMPT = "When Mary and John went to the store, John gave a drink to"
ANSWER, WRONG = " Mary", " John"
# The copying score materialises [batch, positions, heads, vocabulary] logits per layer: above this many floats
# it is skipped.
COPYING_FLOATS = 2**28
PATH_EXPANSION = ("the exact path expansion (bigram and skip-trigram tables, term importance) needs an "
                  "attention-only model without LayerNorm")


@dataclass
class PretrainedAnalysis(Result):
    model: str
    config: dict
    head_scores: dict[str, list[list[float]]]
    induction_heads: list[Head]
    previous_token_heads: list[Head]
    composition: dict[str, list[CompositionEdge]]
    composition_baseline: float
    prompt: str | None = None
    answer: str | None = None
    wrong: str | None = None
    logit_attribution: LogitAttribution | None = None
    logit_lens: LogitLens | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def _single_token(model, text: str) -> int | None:
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    return ids[0] if len(ids) == 1 else None


@torch.no_grad()
def analyze_pretrained(model, name: str, prompt: str = PROMPT, answer: str = ANSWER,
                       wrong: str = WRONG) -> PretrainedAnalysis:
    cfg = model.cfg
    tok = getattr(model, "tokenizer", None)
    bos = getattr(tok, "bos_token_id", None)
    V, n_ctx, L, H = int(cfg.d_vocab), int(cfg.n_ctx), int(cfg.n_layers), int(cfg.n_heads)
    off = 1 if bos is not None else 0
    n_ind = min(50, (n_ctx - off) // 2)
    text = repeated_random_tokens(min(n_ctx, 128) - off, 1, 10, V, bos, 1)
    induction, duplicate = induction_and_duplicate_scores(model, n_ind, bos=bos)
    scores = {"previous_token": previous_token_score(model, text), "duplicate_token": duplicate,
              "induction": induction, "prefix_matching": prefix_matching_score(model, min(25, n_ind), 2, bos=bos)}
    skipped = {"bigrams, skip-trigrams, term importance": PATH_EXPANSION}
    reps = 2
    if 10 * 25 * reps * H * V <= COPYING_FLOATS:
        scores["copying"] = copying_score(model, min(25, n_ind), reps, bos=bos)
    else:
        skipped["copying score"] = (f"needs [10 sequences, {25 * reps} positions, {H} heads, {V} tokens] logits per "
                                    "layer, too many floats for this machine's default")
    comp = composition_scores(model)
    prev = [Head(int(l), int(h)) for l, h in zip(*torch.nonzero(scores["previous_token"] > 0.4, as_tuple=True))]
    out = PretrainedAnalysis(
        model=name, config={"n_layers": L, "n_heads": H, "d_model": int(cfg.d_model), "d_head": int(cfg.d_head),
                            "d_vocab": V, "n_ctx": n_ctx, "normalization": str(cfg.normalization_type)},
        head_scores={k: v.tolist() for k, v in scores.items()}, induction_heads=induction_heads(induction),
        previous_token_heads=prev, composition={m: comp.top(m, 8) for m in ("q", "k", "v")},
        composition_baseline=comp.random_baseline, skipped=skipped)
    a, w = _single_token(model, answer), _single_token(model, wrong)
    if tok is None or a is None or w is None:
        skipped["direct logit attribution, logit lens"] = (f"the names {answer!r} and {wrong!r} are not single tokens "
                                                           "of this tokenizer")
        return out
    tokens = model.to_tokens(prompt)[:, :n_ctx]
    ans, wr = torch.tensor([a]), torch.tensor([w])
    out.prompt, out.answer, out.wrong = prompt, answer, wrong
    out.logit_attribution = direct_logit_attribution(model, tokens, ans, wr)
    out.logit_lens = logit_lens(model, tokens, ans, wr)
    return out

"""Behaviours of induction-like heads (Olsson et al. 2022, 'Beyond exact copying'), measured on one model.

- `copying_behaviour`: a passage repeating a rare identifier; the per-token loss on the identifier's tokens at
  the first occurrence and at the repeats, and a head's attention from each repeated token to the token that
  followed its earlier copy (the induction target).
- `translation_behaviour`: on `data.synthetic.TranslationTask`, each head's fuzzy-induction score: mean attention
  from the second half's word A to the token after A's translation A* (the only earlier token with A's meaning).
- `pattern_behaviour`: on `data.synthetic.PatternTask`, each head's share of attention from ':' landing on earlier
  examples with the same (category, category) pair, against the share those examples' tokens have of the
  context (what uniform attention would give), and the label accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.circuits.heads import attention_patterns
from circuitlab.data.synthetic import PatternTask, TranslationTask
from circuitlab.heads import Head
from circuitlab.model.loss import masked_accuracy
from circuitlab.results import Result


def _best(scores: torch.Tensor) -> tuple[int, int]:
    i = int(scores.argmax())
    return i // scores.shape[1], i % scores.shape[1]


def _find_all(seq: list[int], sub: list[int]) -> list[int]:
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub]


@dataclass
class CopyingBehaviour(Result):
    """tokens: the decoded passage; name_tokens: the identifier's token strings; occurrences: start positions;
    first_loss / repeat_loss: mean loss (nats) on the identifier's tokens after its first token, at the first
    occurrence and at the later ones; head: the head examined; head_attention: its mean attention from each
    repeated identifier token to the induction target; pattern: that head's full pattern (for a viewer)."""

    tokens: list[str]
    name_tokens: list[str]
    occurrences: list[int]
    first_loss: float
    repeat_loss: float
    improvement: float
    head: Head
    head_attention: float
    per_token_loss: list[float]
    pattern: list[list[float]]


@torch.no_grad()
def copying_behaviour(model, tokenizer, text: str, name: str, head: tuple[int, int]) -> CopyingBehaviour:
    ids = [0] + tokenizer.encode(text).ids  # BOS first, as in training
    ids = ids[: model.cfg.n_ctx]
    # the identifier after a space is tokenized differently from the same text glued to '_' or '('; take the
    # form that occurs most often in the passage
    forms = [tokenizer.encode(f).ids for f in (name, " " + name)]
    name_ids = max(forms, key=lambda f: len(_find_all(ids, f)))
    occ = _find_all(ids, name_ids)
    if len(occ) < 2:
        raise ValueError(f"{name!r} occurs {len(occ)} time(s) in the passage's first {model.cfg.n_ctx} tokens; need 2+")
    tokens = torch.tensor([ids])
    loss = model(tokens, return_type="loss", loss_per_token=True)[0]  # index i predicts token i + 1
    within = lambda s: [s + j for j in range(1, len(name_ids))]  # noqa: E731  tokens after the identifier's first
    first = torch.stack([loss[p - 1] for p in within(occ[0])]).mean()
    repeat = torch.stack([loss[p - 1] for s in occ[1:] for p in within(s)]).mean()
    pattern = attention_patterns(model, tokens)[head[0], 0, head[1]]  # [q, k]
    # from token s + j (j < len - 1) of a repeat, the induction target is occ[0] + j + 1
    att = [pattern[s + j, occ[0] + j + 1] for s in occ[1:] for j in range(len(name_ids) - 1)]
    decode = lambda t: tokenizer.decode([t]) if t != 0 else "<bos>"  # noqa: E731
    return CopyingBehaviour(
        tokens=[decode(t) for t in ids], name_tokens=[decode(t) for t in name_ids], occurrences=occ,
        first_loss=float(first), repeat_loss=float(repeat), improvement=float(first - repeat),
        head=Head(*head), head_attention=float(torch.stack(att).mean()),
        per_token_loss=loss.tolist(), pattern=pattern.tolist())


@dataclass
class TranslationBehaviour(Result):
    """fuzzy_induction: [layer][head] mean attention from word A (second half) to the token after A*; best_head
    and its score; accuracy: next-word accuracy on the second half; tokens/pattern: one example for a viewer."""

    fuzzy_induction: list[list[float]]
    best_head: Head
    best_score: float
    chance: float
    accuracy: float
    tokens: list[str]
    pattern: list[list[float]]


@torch.no_grad()
def translation_behaviour(model, task: TranslationTask, n: int = 64, seed: int = 1) -> TranslationBehaviour:
    tokens, mask, starts = task.sample(n, torch.Generator().manual_seed(seed), return_positions=True)
    p = attention_patterns(model, tokens).transpose(0, 1)  # [batch, layer, head, q, k]
    i = torch.arange(task.length - 1)
    q = starts[:, 1:2] + i  # word A_i of the second half
    k = starts[:, 0:1] + i + 1  # the token after its translation A_i*
    b = torch.arange(n)[:, None]
    scores = p.permute(0, 3, 4, 1, 2)[b, q, k].mean(dim=(0, 1))  # [layer, head]
    chance = (1 / (q + 1).float()).mean()
    layer, head = _best(scores)
    return TranslationBehaviour(
        fuzzy_induction=scores.tolist(), best_head=Head(layer, head), best_score=float(scores[layer, head]),
        chance=float(chance), accuracy=masked_accuracy(model, tokens, mask),
        tokens=[task.vocab[t] for t in tokens[0].tolist()], pattern=p[0, layer, head].tolist())


@dataclass
class PatternBehaviour(Result):
    """share: [layer][head] mean share of attention from ':' on earlier examples with the same category pair
    (examples with at least one such earlier example); uniform: the share those examples' tokens have of the
    context before ':'; accuracy: label accuracy on the same examples."""

    share: list[list[float]]
    best_head: Head
    best_share: float
    uniform: float
    accuracy: float
    tokens: list[str]
    pattern: list[list[float]]


@torch.no_grad()
def pattern_behaviour(model, task: PatternTask, n: int = 64, seed: int = 1) -> PatternBehaviour:
    tokens, _, pairs = task.sample(n, torch.Generator().manual_seed(seed), return_pairs=True)
    p = attention_patterns(model, tokens).transpose(0, 1)  # [batch, layer, head, q, k]
    colons = task.colon_positions()
    shares, uniform, hits = [], [], []
    logits = model(tokens)
    for b in range(n):
        for k in range(1, task.n_examples):
            same = [j for j in range(k) if pairs[b, j] == pairs[b, k]]
            if not same:
                continue
            keys = torch.tensor([pos for j in same for pos in task.example_span(j)])
            c = colons[k]
            shares.append(p[b, :, :, c, keys].sum(-1))
            uniform.append(len(keys) / (c + 1))
            hits.append(float(logits[b, c].argmax() == tokens[b, c + 1]))
    share = torch.stack(shares).mean(0)
    layer, head = _best(share)
    return PatternBehaviour(
        share=share.tolist(), best_head=Head(layer, head), best_share=float(share[layer, head]),
        uniform=float(sum(uniform) / len(uniform)), accuracy=float(sum(hits) / len(hits)),
        tokens=[task.vocab[t] for t in tokens[0].tolist()], pattern=p[0, layer, head].tolist())

"""Where the skip-trigram reading of a one-layer model breaks (Shlegeris 2023, 'One-layer transformers aren't
equivalent to a set of skip-trigrams').

A skip-trigram table is additive: 'source ... dest -> out' adds the same amount to out's logit whatever else is in
the context. A real head normalises its attention with a softmax, so a second key with a higher score ('thief')
takes attention away from the source and switches its trigram off. We measure it with three contexts:
  [BOS, source, dest]          -> the head raises out's (centred) logit by e_source
  [BOS, thief, dest]           -> by e_thief (the thief's own trigram, chosen to barely touch out)
  [BOS, source, thief, dest]   -> by e_both
The table predicts e_source + e_thief; the gap (prediction - e_both) is what no skip-trigram table can express.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.circuits.circuits import unembedding
from circuitlab.circuits.heads import attention_patterns
from circuitlab.circuits.paths import head_results
from circuitlab.circuits.skip_trigrams import SkipTrigramTable, centred_token_circuits
from circuitlab.heads import Head
from circuitlab.model import ModelConfig, Transformer
from circuitlab.results import Result


@dataclass
class SoftmaxCompetition(Result):
    """Centred logit raise of `out` by head `head` at the destination, in each context (see module docstring);
    attention: dest -> source without and with the thief."""

    head: Head
    source: str
    destination: str
    thief: str
    out: str
    attention_to_source_alone: float
    attention_to_source_with_thief: float
    effect_source_alone: float
    effect_thief_alone: float
    skip_trigram_prediction: float
    actual_effect_with_both: float
    gap: float


@torch.no_grad()
def softmax_competition(model, layer: int, head: int, source: int, dest: int, thief: int, out: int, bos: int = 0,
                        decode=None) -> SoftmaxCompetition:
    U = unembedding(model)
    u_out = U[:, out] - U.mean(1)  # centred unembedding direction of `out`

    def run(context: list[int]) -> tuple[float, torch.Tensor]:
        tokens = torch.tensor([[bos, *context, dest]], device=model.W_E.device)
        _, _, results = head_results(model, tokens)
        return float(results[layer, 0, -1, head] @ u_out), tokens

    e_s, t_s = run([source])
    e_t, _ = run([thief])
    e_both, t_both = run([source, thief])
    a_alone = float(attention_patterns(model, t_s)[layer, 0, head, -1, 1])
    a_both = float(attention_patterns(model, t_both)[layer, 0, head, -1, 1])
    show = decode or str
    return SoftmaxCompetition(
        head=Head(layer, head), source=show(source), destination=show(dest), thief=show(thief), out=show(out),
        attention_to_source_alone=a_alone, attention_to_source_with_thief=a_both, effect_source_alone=e_s,
        effect_thief_alone=e_t, skip_trigram_prediction=e_s + e_t, actual_effect_with_both=e_both,
        gap=e_s + e_t - e_both,
    )


@torch.no_grad()
def competition_from_table(model, tables: list[SkipTrigramTable], pool: torch.Tensor, bos: int = 0, decode=None,
                           margin: float = 2.0) -> SoftmaxCompetition | None:
    """The demonstration on a trained one-layer model. Search the heads' skip-trigram tables for a trigram
    (source, dest, out) and a thief: a pool token that dest attends to more strongly than to the source (score higher
    by `margin`), picked among those as the one whose own OV effect on `out` is smallest. Then measure. None if no
    table has such a thief."""
    pool = torch.as_tensor(pool)
    where = lambda t: int((pool == t).nonzero()[0, 0])  # noqa: E731
    best = None
    for table in tables:
        layer, head = table.head
        qk, ov = centred_token_circuits(model, layer, head, pool)
        for row in table.rows:
            s, o = where(row.source_id), where(row.out_ids[0])
            for dest in row.destination_ids:
                scores = qk.A[where(dest)] @ qk.B  # [n_pool]
                thieves = (scores > scores[s] + margin) & (pool != bos) & (pool != row.source_id)
                if not thieves.any():
                    continue
                idx = thieves.nonzero()[:, 0]
                effect = (ov.A[idx] @ ov.B[:, o]).abs()
                cand = (float(ov.A[s] @ ov.B[:, o]) - float(effect.min()), layer, head, row.source_id, dest,
                        int(pool[idx[effect.argmin()]]), row.out_ids[0])
                if best is None or cand[0] > best[0]:
                    best = cand
    if best is None:
        return None
    _, layer, head, source, dest, thief, out = best
    return softmax_competition(model, layer, head, source, dest, thief, out, bos, decode)


def competition_model() -> Transformer:
    """A hand-built one-layer, one-head model: tokens BOS=0, A=1, B=2, D=3, X=4, Y=5. D attends to A (score 4) and
    more strongly to B (score 8); attending to A raises X by 5, attending to B raises Y by 5. Its skip-trigram table
    is 'A ... D -> X' and 'B ... D -> Y', yet in 'A B D' B steals the attention and X is barely raised."""
    V = 6
    m = Transformer(ModelConfig(n_layers=1, d_model=V, n_heads=1, d_head=V, n_ctx=8, d_vocab=V,
                                positional_embedding_type="shortformer"))
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E.copy_(torch.eye(V))
        m.W_U.copy_(torch.eye(V))
        a = m.blocks[0].attn
        a.W_Q[0] = V ** 0.5 * torch.eye(V)  # cancels the 1/sqrt(d_head) of the score
        a.W_K[0, 1, 3] = 4.0  # key A matches query D with score 4
        a.W_K[0, 2, 3] = 8.0  # key B matches query D with score 8
        a.W_V[0] = torch.eye(V)
        a.W_O[0, 1, 4] = 5.0  # A -> X
        a.W_O[0, 2, 5] = 5.0  # B -> Y
    return m

"""Skip-trigram tables of one-layer heads, and the 'bugs' their factored form implies (Elhage et al. 2021,
'One-Layer Attention-Only Transformers': 'Skip-trigram "bugs"').

A layer-0 head implements skip-trigrams [source] ... [destination] -> [out]:
  QK circuit  W_E W_Q (W_E W_K)^T [dest, source]   how strongly a destination token attends to a source token;
  OV circuit  W_E W_V W_O W_U     [source, out]    how attending to the source raises each output token's logit.
Softmax only compares keys of one query and outputs of one logit vector, so both are centred: the QK circuit by
subtracting the mean key (over the token pool) and the OV circuit by subtracting the mean unembedding column.
Centring the factors keeps both low-rank, so tables are read in chunks, never as vocab x vocab matrices.

Because the score factors as QK[dest, source] and the effect as OV[source, out], a head that learned both
'keep ... in -> mind' and 'keep ... at -> bay' must also raise 'keep ... in -> bay'. `skip_trigram_bugs` finds
such pairs: two trigrams the corpus contains, whose crossed combination it never does (counted in the corpus,
source within `window` tokens before the destination).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformer_lens import FactoredMatrix

from circuitlab.circuits.circuits import row_chunks, unembedding
from circuitlab.heads import Head
from circuitlab.results import Result


def centred_token_circuits(model, layer: int, head: int, pool: Tensor) -> tuple[FactoredMatrix, FactoredMatrix]:
    """(QK [dest, source], OV [source, out]) on tokens for one head, restricted to `pool` and centred."""
    E = model.W_E[pool]
    q = E @ model.W_Q[layer, head]
    k = E @ model.W_K[layer, head]
    qk = FactoredMatrix(q, (k - k.mean(0)).T)
    U = unembedding(model)[:, pool]
    ov = FactoredMatrix(E @ model.W_V[layer, head], model.W_O[layer, head] @ (U - U.mean(1, keepdim=True)))
    return qk, ov


@dataclass
class SkipTrigramRow(Result):
    """One source token's skip-trigrams: [source] ... [destinations] -> [outs], with the centred QK scores of the
    destinations and OV effects on the outs (token strings and ids)."""

    source: str
    source_id: int
    destinations: list[str]
    destination_ids: list[int]
    qk: list[float]
    outs: list[str]
    out_ids: list[int]
    ov: list[float]

    @property
    def copies(self) -> bool:
        """Whether the source is among its own outs (a copying skip-trigram, out = source)."""
        return self.source in self.outs


@dataclass
class SkipTrigramTable(Result):
    """For one head: the sources ranked by strongest attention score plus strongest logit effect (both centred
    logits), each with its top destinations (QK) and top outs (OV)."""

    head: Head
    rows: list[SkipTrigramRow]


@torch.no_grad()
def skip_trigram_table(model, layer: int, head: int, pool: Tensor, decode=None, n_sources: int = 8,
                       n_each: int = 5) -> SkipTrigramTable:
    """The head's strongest skip-trigrams, as in the paper's tables: [source] ... [destinations] -> [outs]."""
    pool = torch.as_tensor(pool)
    qk, ov = centred_token_circuits(model, layer, head, pool)
    # chunked over rows: the best score any destination gives each source, the largest raise of each source
    attend = torch.stack([block.max(0).values for _, block in row_chunks(qk.A, qk.B)]).max(0).values
    raise_ = torch.cat([block.max(1).values for _, block in row_chunks(ov.A, ov.B)])
    show = decode or str
    rows = []
    for i in (attend + raise_).argsort(descending=True)[:n_sources].tolist():
        col = qk.A @ qk.B[:, i]  # scores of every destination for source i
        row = ov.A[i] @ ov.B  # effect of source i on every out
        d_v, d_i = col.topk(n_each)
        o_v, o_i = row.topk(n_each)
        rows.append(SkipTrigramRow(
            source=show(int(pool[i])), source_id=int(pool[i]),
            destinations=[show(int(pool[j])) for j in d_i], destination_ids=[int(pool[j]) for j in d_i],
            qk=d_v.tolist(), outs=[show(int(pool[j])) for j in o_i], out_ids=[int(pool[j]) for j in o_i],
            ov=o_v.tolist(),
        ))
    return SkipTrigramTable(head=Head(layer, head), rows=rows)


def skip_trigram_counts(tokens: np.ndarray, source: int, dests: list[int], outs: list[int], window: int) -> np.ndarray:
    """[len(dests), len(outs)] counts of source ... dest out in the corpus, dest within `window` tokens after source
    (each (source occurrence, dest position) counted once)."""
    t = np.asarray(tokens)
    at = np.nonzero(t == source)[0]
    d_index = np.full(max(int(t.max()) + 1, max(dests + outs) + 1), -1)
    o_index = d_index.copy()
    d_index[dests] = np.arange(len(dests))
    o_index[outs] = np.arange(len(outs))
    counts = np.zeros((len(dests), len(outs)), dtype=np.int64)
    for off in range(1, window):
        p = at + off
        p = p[p + 1 < len(t)]
        di, oi = d_index[t[p]], o_index[t[p + 1]]
        ok = (di >= 0) & (oi >= 0)
        np.add.at(counts, (di[ok], oi[ok]), 1)
    return counts


@dataclass
class Trigram(Result):
    """source ... dest -> out, with its corpus count and the head's centred QK score (dest) and OV effect (out)."""

    dest: str
    out: str
    count: int
    qk: float
    ov: float


@dataclass
class SkipTrigramBug(Result):
    """'source ... dest_a -> out_a' and 'source ... dest_b -> out_b' are both in the corpus (counts), yet the head
    also raises 'source ... dest_a -> out_b', which the corpus never continues that way (bug_count = 0).
    qk / ov: the head's centred scores, showing the bug gets the same attention and logit raise."""

    head: Head
    source: str
    intended: list[Trigram]
    bug: Trigram


@torch.no_grad()
def skip_trigram_bugs(table: SkipTrigramTable, tokens: np.ndarray, window: int, decode=None, min_count: int = 3,
                      n: int = 3) -> list[SkipTrigramBug]:
    """Find factoring bugs among each table row's top destinations x top outs, using the corpus's trigram counts."""
    show = decode or str
    found = []
    for row in table.rows:
        D, O = row.destination_ids, row.out_ids
        c = skip_trigram_counts(tokens, row.source_id, D, O, window)
        best = None
        for a in range(len(D)):
            for b in range(len(D)):
                if a == b:
                    continue
                oa, ob = int(c[a].argmax()), int(c[b].argmax())
                if oa == ob or c[a, oa] < min_count or c[b, ob] < min_count or c[a, ob] > 0:
                    continue
                strength = min(c[a, oa], c[b, ob])
                if best is None or strength > best[0]:
                    best = (strength, a, oa, b, ob)
        if best is not None:
            _, a, oa, b, ob = best
            trig = lambda d, o: Trigram(show(D[d]), show(O[o]), int(c[d, o]), row.qk[d], row.ov[o])  # noqa: E731
            found.append(SkipTrigramBug(head=table.head, source=row.source,
                                        intended=[trig(a, oa), trig(b, ob)], bug=trig(a, ob)))
        if len(found) >= n:
            break
    return found

"""Term importance by path order (Elhage et al. 2021, 'Two-Layer Attention-Only Transformers', term importance).

Record the attention patterns on text, then rerun with the patterns frozen and keep only paths up to a given order
(see `paths.py`): order 0 = the direct path W_E W_U, order 1 = every head reading the embeddings
(A^h x0 W_OV^h W_U), order 2 = virtual heads (A^{h2} A^{h1} x0 W_OV^{h1} W_OV^{h2} W_U), ... The importance of an
order is the drop in next-token loss, in nats, when its terms are added to the lower orders:
  direct path: ln(d_vocab) - loss(order 0)     (against the uniform distribution)
  order k:     loss(orders < k) - loss(orders <= k)
Paper's 2L model: direct path 1.8 nats, individual heads +5.2, virtual heads +0.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab.circuits.heads import attention_patterns
from circuitlab.circuits.paths import check_linear_attention_only, embeddings, head_values, order_expansion, unembed
from circuitlab.results import Result


@dataclass
class TermImportance(Result):
    """Losses in nats on the given text (next-token prediction at every position).
    cumulative_loss[k]: loss keeping paths of order <= k (the last equals the model's loss);
    improvement[k]: nats gained by adding order k (k = 0: over the uniform distribution);
    order_1_by_layer[l]: nats gained by adding only layer l's heads' order-1 terms to the direct path;
    order_1_by_head[l][h]: nats lost when removing head l.h's order-1 term from (direct + all order-1 terms)."""

    uniform_loss: float
    model_loss: float
    cumulative_loss: list[float]
    improvement: list[float]
    order_1_by_layer: list[float]
    order_1_by_head: Tensor
    n_tokens: int

    def summary(self) -> str:
        names = ["direct path", "individual heads", "virtual heads"] + [f"order {k}" for k in range(3, 99)]
        return ", ".join(f"{names[k]} {v:+.2f}" for k, v in enumerate(self.improvement)) + " nats"


def _loss(model, resid: Tensor, tokens: Tensor) -> float:
    logits = unembed(model, resid[:, :-1])
    return float(F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()))


@torch.no_grad()
def term_importance(model, tokens: Tensor, batch_size: int = 16) -> TermImportance:
    """Term importance on `tokens` [batch, pos] (e.g. held-out text windows starting with BOS)."""
    check_linear_attention_only(model, "term importance")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sums = {"cum": torch.zeros(L + 1), "layer": torch.zeros(L), "head": torch.zeros(L, H), "model": 0.0}
    n = 0
    for batch in tokens.split(batch_size):
        w = batch.shape[0]
        patterns = attention_patterns(model, batch)
        R = order_expansion(model, batch, patterns)  # [L + 1, batch, pos, d_model]
        cum = R.cumsum(0)
        for k in range(L + 1):
            sums["cum"][k] += w * _loss(model, cum[k], batch)
        x0, _ = embeddings(model, batch)
        first = [head_values(model, l, x0, patterns[l]) for l in range(L)]  # order-1 terms per head
        all_first = x0 + sum(f.sum(2) for f in first)
        for l in range(L):
            sums["layer"][l] += w * _loss(model, x0 + first[l].sum(2), batch)
            for h in range(H):
                sums["head"][l, h] += w * _loss(model, all_first - first[l][:, :, h], batch)
        sums["model"] += w * float(model(batch, return_type="loss"))
        n += w
    cum = (sums["cum"] / n).tolist()
    uniform = math.log(model.cfg.d_vocab)
    improvement = [uniform - cum[0]] + [cum[k - 1] - cum[k] for k in range(1, L + 1)]
    return TermImportance(
        uniform_loss=uniform, model_loss=sums["model"] / n, cumulative_loss=cum, improvement=improvement,
        order_1_by_layer=[cum[0] - x for x in (sums["layer"] / n).tolist()],
        order_1_by_head=sums["head"] / n - (cum[1] if L else 0.0), n_tokens=int(n * (tokens.shape[1] - 1)),
    )

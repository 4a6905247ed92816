"""Head scores from attention patterns on synthetic sequences (Olsson et al. 2022, 'Head evaluators').

All of them work without a tokenizer: random tokens are drawn uniformly from the vocabulary (optionally from a
given set, e.g. skipping the most and least common tokens, as the paper does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.circuits.circuits import unembedding
from circuitlab.results import Result


def repeated_random_tokens(
    n_tokens: int, n_repeats: int, batch: int, d_vocab: int, bos: int | None = 0, seed: int = 0,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """[batch, (bos) + n_tokens * n_repeats]: the same n_tokens random tokens repeated, after an optional BOS."""
    g = torch.Generator().manual_seed(seed)
    pool = allowed if allowed is not None else torch.tensor([t for t in range(d_vocab) if t != bos])
    seq = pool[torch.randint(0, len(pool), (batch, n_tokens), generator=g)].repeat(1, n_repeats)
    if bos is not None:
        seq = torch.cat([torch.full((batch, 1), bos, dtype=seq.dtype), seq], dim=1)
    return seq


@torch.no_grad()
def attention_patterns(model, tokens: torch.Tensor) -> torch.Tensor:
    """[n_layers, batch, n_heads, query_pos, key_pos]."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)])


def _offset_score(patterns: torch.Tensor, dest: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Mean over batch and the given (dest, src) position pairs of the attention dest -> src: [n_layers, n_heads]."""
    return patterns[..., dest, src].mean(dim=(1, -1))


@dataclass
class HeadScores(Result):
    """Per-head scores, each [n_layers, n_heads]."""

    previous_token: torch.Tensor
    duplicate_token: torch.Tensor
    induction: torch.Tensor
    prefix_matching: torch.Tensor
    copying: torch.Tensor
    settings: dict


def previous_token_score(model, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention from position i to i-1, i >= 1 (Olsson et al.: on training text)."""
    T = tokens.shape[1]
    i = torch.arange(1, T)
    return _offset_score(attention_patterns(model, tokens), i, i - 1)


def induction_and_duplicate_scores(model, n_tokens: int, batch: int = 10, bos: int | None = 0, seed: int = 0,
                                   allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """On BOS + N random tokens + the same N again: for each token of the second half, induction score = attention
    to the token after its earlier copy (offset -(N-1)); duplicate-token score = attention to the earlier copy
    itself (offset -N)."""
    tokens = repeated_random_tokens(n_tokens, 2, batch, model.cfg.d_vocab, bos, seed, allowed)
    p = attention_patterns(model, tokens)
    off = 1 if bos is not None else 0
    dest = torch.arange(off + n_tokens, off + 2 * n_tokens)
    return _offset_score(p, dest, dest - n_tokens + 1), _offset_score(p, dest, dest - n_tokens)


def prefix_matching_score(model, n_tokens: int = 25, n_repeats: int = 4, batch: int = 10, bos: int | None = 0,
                          seed: int = 0, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Olsson et al. 2022, 'Prefix matching': BOS + 25 random tokens repeated 4 times; for every token after the first
    repeat, the mean attention to the tokens that followed its earlier copies (averaged over those copies, as the
    paper does), averaged over tokens and sequences. [n_layers, n_heads]."""
    tokens = repeated_random_tokens(n_tokens, n_repeats, batch, model.cfg.d_vocab, bos, seed, allowed)
    p = attention_patterns(model, tokens)
    off = 1 if bos is not None else 0
    total, count = 0.0, 0
    for dest in range(off + n_tokens, off + n_tokens * n_repeats):
        srcs = torch.arange(dest - n_tokens + 1, off, -n_tokens)  # after each earlier copy
        srcs = srcs[srcs < dest]
        total = total + p[..., dest, srcs].mean(-1).mean(1)
        count += 1
    return total / count


@torch.no_grad()
def copying_score(model, n_tokens: int = 25, n_repeats: int = 4, batch: int = 10, bos: int | None = 0, seed: int = 0,
                  allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Olsson et al. 2022, 'Copying' evaluator, on the prefix-matching sequences: each head's direct effect on the
    logits at every position, l = (z W_O) W_U, mean-subtracted over the vocabulary, then ReLU; the score is the share
    of that raise that lands on the tokens the head attends to -- sum_v relu(l)_v w_v / sum_v relu(l)_v, with w_v the
    attention on token v relative to the most-attended token (1 for the token a one-hot head attends to). The same
    share of the lowering relu(-l) is subtracted, so the score lies in [-1, 1]: +1 = raises exactly what it attends
    to, -1 = lowers it, ~0 = unrelated; a head raising its target by 10 and 100 other tokens by 1 scores ~0.1.
    Averaged over positions after BOS. [n_layers, n_heads]."""
    tokens = repeated_random_tokens(n_tokens, n_repeats, batch, model.cfg.d_vocab, bos, seed, allowed)
    names = [f"blocks.{l}.attn.hook_{k}" for l in range(model.cfg.n_layers) for k in ("z", "pattern")]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    onehot = torch.nn.functional.one_hot(tokens, model.cfg.d_vocab).float()  # [batch, key_pos, vocab]
    out = []
    for l in range(model.cfg.n_layers):
        z, pattern = cache[f"blocks.{l}.attn.hook_z"], cache[f"blocks.{l}.attn.hook_pattern"]
        logits = torch.einsum("bqhe,hed,dv->bqhv", z, model.W_O[l], unembedding(model))
        logits = logits - logits.mean(-1, keepdim=True)
        attended = torch.einsum("bhqk,bkv->bqhv", pattern, onehot)  # attention mass on each token id
        weight = attended / attended.amax(-1, keepdim=True).clamp_min(1e-30)
        up, down = logits.clamp_min(0), (-logits).clamp_min(0)
        share = lambda x: (x * weight).sum(-1) / x.sum(-1).clamp_min(1e-30)  # noqa: E731
        out.append((share(up) - share(down))[:, 1:].mean(dim=(0, 1)))  # skip the BOS position
    return torch.stack(out)


def head_scores(model, text_tokens: torch.Tensor | None = None, bos: int | None = 0, seed: int = 0,
                allowed: torch.Tensor | None = None) -> HeadScores:
    """All per-head scores. Sequence lengths shrink to fit the model's context (said in `settings`)."""
    n_ctx = model.cfg.n_ctx
    off = 1 if bos is not None else 0
    n_ind = min(50, (n_ctx - off) // 2)
    reps = min(4, (n_ctx - off) // 25) if n_ctx - off >= 50 else 2
    n_pm = min(25, (n_ctx - off) // reps)
    if text_tokens is None:
        text_tokens = repeated_random_tokens(n_ctx - off, 1, 10, model.cfg.d_vocab, bos, seed + 1, allowed)
    induction, duplicate = induction_and_duplicate_scores(model, n_ind, bos=bos, seed=seed, allowed=allowed)
    return HeadScores(
        previous_token=previous_token_score(model, text_tokens[:, :n_ctx]),
        duplicate_token=duplicate,
        induction=induction,
        prefix_matching=prefix_matching_score(model, n_pm, reps, bos=bos, seed=seed, allowed=allowed),
        copying=copying_score(model, n_pm, reps, bos=bos, seed=seed, allowed=allowed),
        settings={"induction_repeat_length": n_ind, "prefix_matching_tokens": n_pm, "prefix_matching_repeats": reps,
                  "sequences": 10, "bos": bos},
    )

"""Windows of a token stream, and the token pools that head evaluators draw random sequences from."""

from __future__ import annotations

import numpy as np
import torch

from circuitlab.data.tokens import BOS_ID


def sample_windows(tokens: np.ndarray, n: int, n_ctx: int, rng: np.random.Generator, bos: bool) -> torch.Tensor:
    """n random windows of the token stream, each n_ctx long; with bos, BOS + (n_ctx - 1) stream tokens."""
    length = n_ctx - 1 if bos else n_ctx
    offsets = rng.integers(0, len(tokens) - length + 1, size=n)
    windows = np.asarray(tokens[offsets[:, None] + np.arange(length)], dtype=np.int64)
    if bos:
        windows = np.concatenate([np.full((n, 1), BOS_ID, dtype=np.int64), windows], axis=1)
    return torch.from_numpy(windows)


def text_windows(tokens: np.ndarray, n_ctx: int, n: int = 10, bos: int = BOS_ID, seed: int = 0) -> torch.Tensor:
    """n windows of text, each BOS + (n_ctx - 1) tokens, at seeded random offsets."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - n_ctx, size=n)
    w = np.stack([np.asarray(tokens[s : s + n_ctx - 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(np.concatenate([np.full((n, 1), bos), w], axis=1))


def common_token_pool(tokens: np.ndarray, d_vocab: int, skip_fraction: float = 0.1) -> torch.Tensor:
    """Tokens for random sequences, skipping the most and least common (Olsson et al. 2022, prefix matching)."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=d_vocab)
    order = np.argsort(-counts)
    seen = order[counts[order] > 0]
    k = int(len(seen) * skip_fraction)
    pool = seen[k : len(seen) - k] if len(seen) - 2 * k >= 10 else seen
    return torch.as_tensor(np.sort(pool[pool != BOS_ID]))


def token_pool(tokens: np.ndarray, d_vocab: int, min_count: int = 100, bos: int = BOS_ID) -> torch.Tensor:
    """Tokens seen at least `min_count` times (their rows of the token circuits are trained), without BOS."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=d_vocab)
    pool = np.nonzero(counts >= min_count)[0]
    return torch.as_tensor(pool[pool != bos])

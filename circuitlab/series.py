"""Series over training checkpoints: the one smoothing every analysis uses."""

from __future__ import annotations

import numpy as np


def running_median(values: list[float], k: int = 5) -> list[float]:
    """Centred running median over k points (per-checkpoint measurements are noisy; a median keeps steps sharp)."""
    v = np.asarray(values, dtype=float)
    h = k // 2
    return [float(np.median(v[max(0, i - h) : i + h + 1])) for i in range(len(v))]

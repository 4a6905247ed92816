"""Detecting the phase change over training (Olsson et al. 2022, 'Argument 1': a narrow window in which the ICL
score and induction heads appear, with a bump in the training loss).

Every series is a list of (tokens seen, value) at the saved checkpoints.
- `jump_window`: where a rising series makes most of its rise: from the last point still below 20% of the way from
  its start level to its final level, to the first point after it at or above 80%.
- `loss_bump`: where the 2-layer model's loss stops following the 1-layer model's: the window over which the
  difference L_2L - L_1L falls fastest (per log-token), i.e. the 2-layer model suddenly pulls ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuitlab.results import Result


@dataclass
class Window(Result):
    """[start, end] in tokens seen; share: fraction of the total change (start level -> final) inside it."""

    start: int | None
    end: int | None
    share: float | None


def jump_window(tokens: list[int], values: list[float], lo: float = 0.2, hi: float = 0.8, increasing: bool = True,
                level_points: int = 3) -> Window:
    """The window of a series' main rise (or fall with increasing=False). The start level is the mean of the first
    `level_points` non-initial points (the step-0 model is noise), the final level the mean of the last ones."""
    t = np.asarray(tokens, dtype=float)
    v = np.asarray(values, dtype=float) * (1 if increasing else -1)
    if len(v) < 2 * level_points + 2:
        return Window(None, None, None)
    first = v[1 : 1 + level_points].mean()
    final = v[-level_points:].mean()
    rise = final - first
    if rise <= 0:
        return Window(None, None, None)
    frac = (v - first) / rise
    below = np.nonzero(frac < lo)[0]
    if len(below) == 0:
        return Window(None, None, None)
    # the last time the series is still low, among points before it first gets high for good
    high = np.nonzero(frac >= hi)[0]
    stays = [i for i in high if (frac[i:] >= hi - 0.1).all()]
    if not stays:
        return Window(None, None, None)
    end = stays[0]
    starts = below[below < end]
    if len(starts) == 0:
        return Window(None, None, None)
    start = starts[-1]
    share = float((v[end] - v[start]) / rise)
    return Window(int(t[start]), int(t[end]), share)


def loss_bump(tokens_1l: list[int], loss_1l: list[float], tokens_2l: list[int], loss_2l: list[float],
              span: int = 2) -> Window:
    """Where L_2L - L_1L drops fastest per log-token (over `span` checkpoints), on the 2L model's checkpoints, with
    the 1L loss interpolated in log-tokens. share: the fraction of the final gap formed in that window."""
    t2 = np.asarray(tokens_2l, dtype=float)
    keep = t2 > 0
    t2, l2 = t2[keep], np.asarray(loss_2l, dtype=float)[keep]
    t1 = np.asarray(tokens_1l, dtype=float)
    k1 = t1 > 0
    l1 = np.interp(np.log(t2), np.log(t1[k1]), np.asarray(loss_1l, dtype=float)[k1])
    gap = l2 - l1
    if len(gap) <= span:
        return Window(None, None, None)
    logt = np.log(t2)
    slopes = [(gap[i + span] - gap[i]) / (logt[i + span] - logt[i]) for i in range(len(gap) - span)]
    i = int(np.argmin(slopes))
    total = gap[-1] - gap[: max(1, len(gap) // 4)].max()
    share = float((gap[i + span] - gap[i]) / total) if total < 0 else None
    return Window(int(t2[i]), int(t2[i + span]), share)


def overlaps(a: Window, b: Window, slack: float = 1.5) -> bool:
    """Whether two windows overlap once each is widened by a factor `slack` in tokens (log-spaced checkpoints)."""
    if None in (a.start, a.end, b.start, b.end):
        return False
    return a.start / slack <= b.end * slack and b.start / slack <= a.end * slack

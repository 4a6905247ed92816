"""Phase changes over training (Olsson et al. 2022, 'Argument 1'): where a series makes its main change, whether
that change is abrupt, how much of another series changes inside it, and the bump it leaves in the loss.

- `jump_window`: the window from the last time a series is below 10% of its rise to the first time it is above 90%
  for good (the whole phase change, start to end), on the checkpoints' token counts.
- Abruptness: the window's width in decades of tokens, log10(end / start). Olsson et al. put the phase change at
  2.5-5B tokens (0.30 decades) or, in another passage, 1-3B (0.48 decades), out of 10B; a rise linear in tokens
  from the start of training spans log10(0.9 / 0.1) = 0.95 decades between its 10% and 90% points whatever its
  length, and one linear in log-tokens spans 80% of the run's decades. ABRUPT_DECADES = 0.5 separates them.
- `share_inside`: the fraction of a series' total change (early level -> final level) that happens between a
  window's start and end (the paper: > 75% of the final ICL forms inside the phase-change window).
- `settled`: whether a rise seen so far (training still going) has happened and settled, so training can stop:
  its window is found, its level is reached, and training has gone on past the window's end by the window's own
  width (at least SETTLE_DECADES): long enough to see that the score stays up, and to give `loss_bump` its flank
  after the window.
- `loss_bump`: the bump in the training loss, as the gap L_2L - L_1L: inside the window it must fall at least
  BUMP_SLOPE_RATIO times as fast (per decade of tokens) as in the equally wide spans just before and after it (cut
  at the ends of training, to no less than half the width), and by more than the gap's noise; otherwise there is
  no bump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from circuitlab.results import Result
from circuitlab.series import running_median

ABRUPT_DECADES = 0.5
# Training goes on past a phase change's end by at least this (x1.6 in tokens) before it counts as settled.
SETTLE_DECADES = 0.2
# A bump is a local feature: the gap falls at least twice as fast inside the window as around it. (Twice: a curve
# whose slope merely drifts -- a trend -- has flanks within a few tens of percent of the middle.)
BUMP_SLOPE_RATIO = 2.0
# The drop must exceed NOISE_SIGMAS standard deviations of the gap's checkpoint-to-checkpoint jitter.
NOISE_SIGMAS = 3.0


@dataclass
class Window(Result):
    """[start, end] in tokens seen; share: fraction of the total change (start level -> final) inside it."""

    start: int | None
    end: int | None
    share: float | None

    @property
    def found(self) -> bool:
        return self.start is not None and self.end is not None

    @property
    def decades(self) -> float | None:
        """Width in decades of tokens, log10(end / start)."""
        if not self.found or self.start <= 0:
            return None
        return math.log10(self.end / self.start)

    @property
    def abrupt(self) -> bool:
        return self.decades is not None and self.decades <= ABRUPT_DECADES


def _levels(v: np.ndarray, level_points: int) -> tuple[float, float]:
    """The early level (mean of the first non-initial points: the step-0 model is noise) and the final level."""
    return float(v[1 : 1 + level_points].mean()), float(v[-level_points:].mean())


def jump_window(tokens: list[int], values: list[float], lo: float = 0.1, hi: float = 0.9, increasing: bool = True,
                level_points: int = 3) -> Window:
    """The window of a series' main rise (or fall with increasing=False): from the last point below `lo` of the rise
    before it first gets above `hi` for good (within 0.1), to that point."""
    t = np.asarray(tokens, dtype=float)
    v = np.asarray(values, dtype=float) * (1 if increasing else -1)
    if len(v) < 2 * level_points + 2:
        return Window(None, None, None)
    first, final = _levels(v, level_points)
    rise = final - first
    if rise <= 0:
        return Window(None, None, None)
    frac = (v - first) / rise
    below = np.nonzero(frac < lo)[0]
    if len(below) == 0:
        return Window(None, None, None)
    high = np.nonzero(frac >= hi)[0]
    stays = [i for i in high if (frac[i:] >= hi - 0.1).all()]
    if not stays:
        return Window(None, None, None)
    end = stays[0]
    starts = below[below < end]
    if len(starts) == 0:
        return Window(None, None, None)
    start = starts[-1]
    return Window(int(t[start]), int(t[end]), float((v[end] - v[start]) / rise))


def share_inside(tokens: list[int], values: list[float], window: Window, increasing: bool = True,
                 level_points: int = 3) -> float | None:
    """Fraction of the series' change from its early level to its final level that happens inside `window` (values
    at the checkpoints nearest its start and end). None without a window or without a change."""
    if not window.found:
        return None
    t = np.asarray(tokens, dtype=float)
    v = np.asarray(values, dtype=float) * (1 if increasing else -1)
    first, final = _levels(v, level_points)
    if final - first <= 0:
        return None
    i, j = int(np.abs(t - window.start).argmin()), int(np.abs(t - window.end).argmin())
    return float((v[j] - v[i]) / (final - first))


def contains(window: Window, tokens: float, slack_decades: float = 0.1) -> bool:
    """Whether `tokens` lies inside the window widened by `slack_decades` on each side (checkpoint spacing)."""
    if not window.found or tokens <= 0:
        return False
    f = 10**slack_decades
    return window.start / f <= tokens <= window.end * f


def overlaps(a: Window, b: Window, slack_decades: float = 0.1) -> bool:
    """Whether two windows intersect once each is widened by `slack_decades` on each side."""
    if not (a.found and b.found):
        return False
    f = 10**slack_decades
    return a.start / f <= b.end * f and b.start / f <= a.end * f


def settled(tokens: list[int], values: list[float], level: float, smooth_k: int = 5) -> str | None:
    """Why the rise of `values` (a score measured so far at increasing `tokens`) has happened and settled, or None
    while it has not: its 10% -> 90% window (`jump_window` of the running median over `smooth_k` checkpoints) is
    found, the smoothed score ends >= `level`, and training has gone on past the window's end by
    max(window width, SETTLE_DECADES) decades."""
    if len(values) < 2:
        return None
    smooth = running_median(list(values), k=smooth_k)
    w = jump_window(tokens, smooth)
    if not w.found or w.start <= 0 or smooth[-1] < level:
        return None
    after = max(w.decades, SETTLE_DECADES)
    if tokens[-1] < w.end * 10**after:
        return None
    return (f"the rise {w.start:,}-{w.end:,} tokens ({w.decades:.2f} decades) to {smooth[-1]:.3f} had settled by "
            f"{tokens[-1]:,} tokens ({after:.2f} decades after its end)")


@dataclass
class LossBump(Result):
    """The gap L_2L - L_1L of the training losses across the phase-change window. drop: how much it falls inside the
    window (nats, positive = 2L pulls ahead); slope_inside / slope_before / slope_after: its slope per decade of
    tokens inside the window and in the equally wide spans before and after it; noise: the standard deviation of
    the gap's jitter. found: whether that is a bump (see the module docstring); reason: why not, when it is not."""

    window: Window
    drop: float | None
    slope_inside: float | None
    slope_before: float | None
    slope_after: float | None
    noise: float | None
    found: bool
    reason: str


def _gap(tokens_1l, loss_1l, tokens_2l, loss_2l) -> tuple[np.ndarray, np.ndarray]:
    t2, l2 = np.asarray(tokens_2l, dtype=float), np.asarray(loss_2l, dtype=float)
    t1, l1 = np.asarray(tokens_1l, dtype=float), np.asarray(loss_1l, dtype=float)
    keep, k1 = t2 > 0, t1 > 0
    t2, l2 = t2[keep], l2[keep]
    return t2, l2 - np.interp(np.log(t2), np.log(t1[k1]), l1[k1])


def loss_bump(tokens_1l: list[int], loss_1l: list[float], tokens_2l: list[int], loss_2l: list[float],
              window: Window) -> LossBump:
    """Whether the 2L training loss departs from the 1L one in a bump inside `window` (the phase change)."""
    none = lambda reason: LossBump(window, None, None, None, None, None, False, reason)  # noqa: E731
    if not window.found or window.start <= 0:
        return none("no phase-change window")
    t, gap = _gap(tokens_1l, loss_1l, tokens_2l, loss_2l)
    if len(gap) < 8:
        return none("too few checkpoints")
    logt = np.log10(t)
    width = math.log10(window.end / window.start)

    def value_at(x: float) -> float:
        return float(np.interp(x, logt, gap))

    a, b = math.log10(window.start), math.log10(window.end)
    # the flanks are as wide as the window, cut at the ends of training, but at least half as wide
    lo, hi = max(a - width, logt[0]), min(b + width, logt[-1])
    if a - lo < width / 2 or hi - b < width / 2:
        return none("the window is too close to the start or end of training to compare it with its flanks")
    slope = lambda x0, x1: (value_at(x1) - value_at(x0)) / (x1 - x0)  # noqa: E731
    inside, before, after = slope(a, b), slope(lo, a), slope(b, hi)
    drop = value_at(a) - value_at(b)
    near = (logt >= a - width) & (logt <= b + width)
    noise = float(np.std(np.diff(gap[near])) / math.sqrt(2)) if near.sum() >= 3 else 0.0  # one checkpoint's jitter
    flank = min(before, after, 0.0)  # a flank that rises (or is flat) counts as slope 0: any fall stands out
    if drop <= NOISE_SIGMAS * noise:
        found, reason = False, f"the gap falls {drop:.3f} nats inside the window, within its noise ({noise:.3f})"
    elif inside > BUMP_SLOPE_RATIO * flank:
        found, reason = False, (f"the gap falls {-inside:.3f} nats per decade inside the window vs {-before:.3f} "
                                f"before and {-after:.3f} after: no faster than around it")
    else:
        found, reason = True, ""
    return LossBump(window, drop, inside, before, after, noise, found, reason)

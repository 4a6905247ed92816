"""ICL score, repeated-token loss, phase-change windows, PCA pivot and head ablations, on planted models."""

import math

import numpy as np
import pytest
import torch

from circuitlab.circuits import repeated_random_tokens
from circuitlab.induction.ablation import ablate_heads, ablated_per_token_loss
from circuitlab.induction.icl import icl_positions, icl_score, pca_pivot, per_token_pca, repeated_tokens_loss
from circuitlab.induction.phase import ABRUPT_DECADES, Window, contains, jump_window, loss_bump, overlaps, share_inside
from tests.planted import induction_model


def test_icl_positions_scale_with_the_context():
    assert icl_positions(512) == (50, 500) and icl_positions(1024) == (50, 500)
    assert icl_positions(128) == (12, 125)


def test_planted_induction_model_learns_in_context():
    m = induction_model(n_ctx=48)
    windows = repeated_random_tokens(24, 2, 8, 200, bos=0)[:, :48]
    r = icl_score(m, windows)
    assert r.early == 5 and r.late == 47
    assert r.icl_score < -2.0  # late tokens (in the repeat) are far easier than early ones
    first, second = repeated_tokens_loss(m, 20)
    assert second < 0.5 and first > 4.0  # (a token drawn twice in one half confuses the planted head)


def test_pattern_preserving_ablation_of_the_induction_head_removes_the_icl():
    m = induction_model(n_ctx=48)
    windows = repeated_random_tokens(24, 2, 8, 200, bos=0)[:, :48]
    pp = ablate_heads(m, windows, group=[(1, 1)])
    assert pp.group_share > 0.9 and pp.per_head[1][1] > 2.0
    assert abs(pp.per_head[1][0]) < 0.1  # a random head carries none
    full = ablate_heads(m, windows, group=[(0, 0)], preserve_patterns=False)
    assert full.group_share > 0.5  # without the previous-token head the induction head cannot find its target
    kept = ablate_heads(m, windows, group=[(0, 0)], preserve_patterns=True)
    assert kept.group_share < 0.1  # ... but with its pattern frozen, 1.1 still attends correctly and reads tokens
    clean = ablated_per_token_loss(m, windows, [])
    torch.testing.assert_close(clean, m(windows, return_type="loss", loss_per_token=True), rtol=1e-4, atol=1e-4)


# Null and positive curves over a run whose checkpoints are log-spaced early and every 256k tokens later, as the
# experiment's are: tokens 0, 1e4 ... 20M.
TOKENS = [0] + sorted({int(x) for x in np.geomspace(1e4, 2e7, 24)} | set(range(256_000, 20_000_001, 256_000)))


def logistic(t, centre: float, decades: float) -> float:
    """A rise from 0 to 1 in log-tokens whose 10%->90% part spans `decades`."""
    if t <= 0:
        return 0.0
    scale = decades / (2 * np.log(9))  # the logistic's 10%->90% width is 2 ln 9 scales
    return float(1 / (1 + np.exp(-(np.log10(t) - np.log10(centre)) / scale)))


NULL_RISES = {
    "linear in tokens": [t / 2e7 for t in TOKENS],
    "linear in log-tokens": [max(0.0, np.log10(t) - 4) / np.log10(2e3) if t else 0.0 for t in TOKENS],
    "logistic over 1.2 decades": [logistic(t, 3e6, 1.2) for t in TOKENS],
    "flat": [0.02] * len(TOKENS),
}


def test_phase_window_is_abrupt_only_for_a_phase_change():
    sharp = jump_window(TOKENS, [logistic(t, 1e7, 0.25) for t in TOKENS])
    assert sharp.found and sharp.abrupt and sharp.start < 1e7 < sharp.end and sharp.decades < ABRUPT_DECADES
    for name, curve in NULL_RISES.items():
        w = jump_window(TOKENS, curve)
        assert not w.abrupt, (name, w)
    assert jump_window(TOKENS, NULL_RISES["linear in tokens"]).decades > 0.9  # log10(9) in the continuum


def test_share_inside_a_window():
    w = jump_window(TOKENS, [logistic(t, 1e7, 0.25) for t in TOKENS])
    same = share_inside(TOKENS, [-logistic(t, 1e7, 0.25) for t in TOKENS], w, increasing=False)
    later = share_inside(TOKENS, [-logistic(t, 1e5, 0.25) for t in TOKENS], w, increasing=False)
    assert same > 0.75 and later < 0.05
    assert share_inside(TOKENS, NULL_RISES["linear in tokens"], w) < 0.5
    assert share_inside(TOKENS, [0.0] * len(TOKENS), w) is None


def test_loss_bump_controls():
    phase = [logistic(t, 1e7, 0.25) for t in TOKENS]
    w = jump_window(TOKENS, phase)
    rng = np.random.default_rng(0)
    one = [5 - 0.1 * np.log(t + 1) + rng.normal(0, 0.002) for t in TOKENS]
    bumped = [a - 0.2 * p for a, p in zip(one, phase)]  # 2L pulls ahead by 0.2 nats inside the window
    b = loss_bump(TOKENS, one, TOKENS, bumped, w)
    assert b.found and b.drop == pytest.approx(0.2 * 0.8, abs=0.04) and b.slope_inside < 2 * min(b.slope_before, 0)
    # negative controls: 2L equal to 1L plus noise; 2L pulling ahead steadily (linear in log-tokens); no window
    same = [a + rng.normal(0, 0.002) for a in one]
    assert not loss_bump(TOKENS, one, TOKENS, same, w).found
    trend = [a - 0.05 * np.log10(max(t, 1e4) / 1e4) for a, t in zip(one, TOKENS)]
    r = loss_bump(TOKENS, one, TOKENS, trend, w)
    assert not r.found and "no faster" in r.reason
    assert loss_bump(TOKENS, one, TOKENS, bumped, Window(None, None, None)).reason == "no phase-change window"


def test_windows_contain_and_overlap_with_a_small_slack():
    w = Window(8_000_000, 12_000_000, None)
    assert contains(w, 1e7) and contains(w, 6.5e6) and not contains(w, 4e6) and not contains(w, 2e7)
    assert overlaps(w, Window(13_000_000, 20_000_000, None)) and not overlaps(w, Window(2e5, 5e5, None))


def test_per_token_pca_pivot():
    t = np.linspace(0, 1, 21)
    path = np.stack([np.minimum(t, 0.5), np.maximum(t - 0.5, 0)], 1)  # along x, then turns to y at index 10
    X = path @ np.random.default_rng(0).normal(size=(2, 50))
    proj, ratio = per_token_pca(X)
    assert ratio.sum() == pytest.approx(1.0, abs=1e-6)
    assert pca_pivot(proj) == 10


def _logistic(tokens, centre, width_decades, top=0.5):
    """A rise to `top` whose 10% -> 90% points are `width_decades` apart around `centre` tokens."""
    k = 2 * math.log(9) / width_decades
    return [0.01 + top / (1 + math.exp(-k * (math.log10(t) - math.log10(centre)))) for t in tokens]


def test_settled_only_once_a_rise_has_happened_and_stayed_up():
    from circuitlab.induction.phase import SETTLE_DECADES, settled

    tokens = [int(x) for x in np.geomspace(1e4, 1e8, 120)]
    rise = _logistic(tokens, 1e6, 0.3)
    # positive: an abrupt rise at 1M, followed long enough, settles -- first when training has gone on past its end
    first = next(i for i in range(10, len(tokens)) if settled(tokens[: i + 1], rise[: i + 1], 0.1))
    end = 1e6 * 10 ** 0.15
    assert end * 10**SETTLE_DECADES * 0.8 <= tokens[first] <= end * 10**0.3 * 1.6
    # negatives: a rise still under way, one that stays below the level, one linear in tokens still going up
    assert settled(tokens[:70], _logistic(tokens, 1e8, 0.3)[:70], 0.1) is None
    assert settled(tokens, _logistic(tokens, 1e6, 0.3, top=0.05), 0.1) is None
    linear = [0.5 * t / tokens[-1] for t in tokens]
    assert all(settled(tokens[:i], linear[:i], 0.1) is None for i in range(10, len(tokens), 7))

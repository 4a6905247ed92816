"""ICL score, repeated-token loss, phase-change windows, PCA pivot and head ablations, on planted models."""

import numpy as np
import pytest
import torch

from circuitlab.circuits import repeated_random_tokens
from circuitlab.induction.ablation import ablate_heads, ablated_per_token_loss
from circuitlab.induction.icl import icl_positions, icl_score, pca_pivot, per_token_pca, repeated_tokens_loss
from circuitlab.induction.phase import jump_window, loss_bump, overlaps
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


def test_jump_window_and_loss_bump():
    tokens = [0] + [int(x) for x in np.geomspace(1e4, 1e7, 30)]
    step = [0.0 if t < 2e6 else 1.0 for t in tokens]
    smooth = [0.02 * i for i in range(31)]
    w = jump_window(tokens, step)
    assert w.start < 2e6 <= w.end and w.share == pytest.approx(1.0)
    assert jump_window(tokens, [0.0] * 31).start is None
    one = [5 - 0.1 * np.log(t + 1) for t in tokens]
    two = [a - (0.5 if t >= 2e6 else 0.0) for a, t in zip(one, tokens)]
    bump = loss_bump(tokens, one, tokens, two)
    assert bump.start < 2e6 <= bump.end and overlaps(bump, w)
    assert jump_window(tokens, smooth).end is not None  # a smooth rise still has a window, but a wide one


def test_per_token_pca_pivot():
    t = np.linspace(0, 1, 21)
    path = np.stack([np.minimum(t, 0.5), np.maximum(t - 0.5, 0)], 1)  # along x, then turns to y at index 10
    X = path @ np.random.default_rng(0).normal(size=(2, 50))
    proj, ratio = per_token_pca(X)
    assert ratio.sum() == pytest.approx(1.0, abs=1e-6)
    assert pca_pivot(proj) == 10

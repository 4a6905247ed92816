import json

import numpy as np
import pytest
import torch

from circuitlab.circuits import (
    bigram_agreement, bigram_counts, composition_scores, copying_statistic, head_scores, ov_circuit, qk_circuit,
    random_composition_baseline, repeated_random_tokens,
)
from circuitlab.heads import Head
from circuitlab.model import ModelConfig, Transformer
from circuitlab.model.bridge import to_transformer_bridge
from tests.planted import bigram_model, copying_model, induction_model, previous_token_model


def dense_copying_statistic(M: torch.Tensor) -> torch.Tensor:
    lam = torch.linalg.eigvals(M.double())
    return lam.sum(-1).real / lam.abs().sum(-1)


def test_copying_statistic_low_rank_equals_dense_eigendecomposition():
    m = Transformer(ModelConfig(n_layers=2, d_model=16, n_heads=3, d_head=4, n_ctx=8, d_vocab=30))
    ov, qk = ov_circuit(m), qk_circuit(m)
    torch.testing.assert_close(copying_statistic(ov).double(), dense_copying_statistic(ov.AB), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(copying_statistic(qk).double(), dense_copying_statistic(qk.AB), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ov.AB[1, 2], m.W_E @ m.blocks[1].attn.W_V[2] @ m.blocks[1].attn.W_O[2] @ m.W_U)


def test_copying_and_anti_copying_heads_are_found():
    m = copying_model()
    ov = copying_statistic(ov_circuit(m))[0]
    qk = copying_statistic(qk_circuit(m))[0]
    assert ov[0] == pytest.approx(1.0, abs=1e-5) and ov[1] == pytest.approx(-1.0, abs=1e-5)
    assert abs(ov[2]) < 0.9
    assert qk[0] == pytest.approx(1.0, abs=1e-5) and qk[1] == pytest.approx(-1.0, abs=1e-5)


def test_bigram_agreement_of_a_planted_table():
    V = 12
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(V, 0.3), size=V)  # the true bigram distribution
    stream = [0]
    for _ in range(60_000):
        stream.append(rng.choice(V, p=probs[stream[-1]]))
    stream = np.array(stream)
    exact = bigram_model(torch.tensor(np.log(probs + 1e-12), dtype=torch.float32))
    good = bigram_agreement(exact, stream, min_count=100)
    assert good.correlation > 0.95 and good.mean_kl < 0.01 and good.top1 == 1.0 and good.top5 == 1.0
    c = bigram_counts(stream, V)
    assert good.strongest[0].corpus_count == c[int(good.strongest[0].prev), int(good.strongest[0].next)]
    shuffled = bigram_model(torch.tensor(np.log(probs[rng.permutation(V)] + 1e-12), dtype=torch.float32))
    bad = bigram_agreement(shuffled, stream, min_count=100)
    assert bad.mean_kl > 10 * good.mean_kl + 0.1 and bad.top1 < 0.5
    json.dumps(good.to_json())


def test_previous_token_head_is_found():
    m = previous_token_model()
    s = head_scores(m, bos=0)
    assert s.previous_token[0, 0] > 0.95 and s.previous_token[0, 1] < 0.5
    assert s.induction.max() < 0.5  # one layer with no induction head planted


def test_induction_circuit_is_found_with_k_composition():
    m = induction_model()
    s = head_scores(m, bos=0)
    assert s.previous_token.argmax() == 0  # 0.0
    assert s.previous_token[0, 0] > 0.95
    assert s.induction[1, 1] > 0.8 and s.induction.flatten().argmax() == 3  # 1.1
    assert s.prefix_matching[1, 1] > 0.8 and s.prefix_matching.flatten().argmax() == 3
    assert s.induction[0].max() < 0.3
    comp = composition_scores(m)
    k = torch.nan_to_num(comp.k, nan=-1.0)
    assert k.flatten().argmax() == 0 * 4 + 0 * 2 + 2 + 1  # (0.0 -> 1.1)
    top = comp.top("k", 1)[0]
    assert (top.sender, top.receiver) == (Head(0, 0), Head(1, 1)) and top.score == pytest.approx(float(comp.k[0, 0, 1, 1]))
    # The planted maps are rank-V identities, whose normalised Frobenius score is 1/sqrt(V) (0.071 for V=200);
    # Q and V composition of the same pair are ~0 (raw scores); the K score stands above the random baseline.
    assert float(comp.k[0, 0, 1, 1]) == pytest.approx(200**-0.5, rel=0.02)
    assert float(comp.k[0, 0, 1, 1]) > comp.random_baseline
    assert comp.q[0, 0, 1, 1] < 0.01 and comp.v[0, 0, 1, 1] < 0.01
    assert float(comp.excess("k")[0, 0, 1, 1]) == pytest.approx(200**-0.5 - comp.random_baseline, rel=0.02)
    others = torch.nan_to_num(comp.k, nan=-1.0).flatten().sort(descending=True).values
    assert others[0] - others[1] > 0.02
    assert torch.isnan(comp.k[1, 0, 0, 0]) and torch.isnan(comp.k[0, 0, 0, 1])  # only earlier -> later layers
    json.dumps(comp.to_json())


def test_planted_induction_head_predicts_the_repeat():
    m = induction_model()
    tokens = repeated_random_tokens(20, 2, 4, 200, bos=0, seed=3)
    loss = m(tokens, return_type="loss", loss_per_token=True)
    assert loss[:, 21:].mean() < 0.5 * loss[:, :19].mean()  # second half is predicted from the first


def test_random_baseline_matches_random_heads():
    base = random_composition_baseline(64, 8)
    assert 0.05 < base < 0.5
    m = Transformer(ModelConfig(n_layers=2, d_model=64, n_heads=8, d_head=8, n_ctx=8, d_vocab=50))
    comp = composition_scores(m)
    assert abs(float(comp.excess("k")[0, :, 1, :].mean())) < 0.05  # random heads score the random baseline on average


def test_analyses_run_on_a_transformer_lens_bridge():
    m = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=50,
                                positional_embedding_type="standard"))
    bridge = to_transformer_bridge(m)
    ours, theirs = composition_scores(m), composition_scores(bridge)
    torch.testing.assert_close(ours.k, theirs.k, equal_nan=True, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(copying_statistic(ov_circuit(m)), copying_statistic(ov_circuit(bridge)), rtol=1e-4, atol=1e-5)
    a, b = head_scores(m), head_scores(bridge)
    torch.testing.assert_close(a.induction, b.induction, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.prefix_matching, b.prefix_matching, rtol=1e-4, atol=1e-5)

"""Every Framework claim has a positive control (planted weights with the effect -> "reproduced") and a negative
control (random weights or data without the effect -> "not reproduced")."""

import numpy as np
import pytest
import torch

from circuitlab.experiments.framework import analyze_model, framework_claims
from circuitlab.model import ModelConfig, Transformer
from tests.planted import bigram_model, induction_model


def _verdict(claims, words: str) -> str:
    (c,) = [c for c in claims if words in c.claim]
    return c.verdict


def _stream(V: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, V, size=n)


@pytest.fixture(scope="module")
def two_layer():
    """The planted induction circuit (previous-token head 0.0 -> induction head 1.1 by K-composition) and a random
    model of the same shape, analysed on random token streams."""
    planted = induction_model()
    random = Transformer(ModelConfig(**{**planted.cfg.to_dict(), "seed": 3}))
    stream = _stream(planted.cfg.d_vocab, 40_000)
    return {name: analyze_model(m, stream, stream[:5_000], n_text=8, trigram_corpus_tokens=10_000)
            for name, m in (("planted", planted), ("random", random))}


def test_k_composition_claim_controls(two_layer):
    words = "induction heads by K-composition"
    assert _verdict(framework_claims({"attn2": two_layer["planted"]}), words) == "reproduced"
    assert _verdict(framework_claims({"attn2": two_layer["random"]}), words) == "not reproduced"


def test_bigram_claim_controls():
    V = 12
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(V, 0.3), size=V)
    stream = [0]
    for _ in range(30_000):
        stream.append(rng.choice(V, p=probs[stream[-1]]))
    stream = np.array(stream)
    planted = bigram_model(torch.tensor(np.log(probs + 1e-12), dtype=torch.float32))
    random = Transformer(ModelConfig(n_layers=0, d_model=V, n_heads=1, d_head=1, n_ctx=8, d_vocab=V))
    words = "zero-layer transformer"
    for model, expected in ((planted, "reproduced"), (random, "not reproduced")):
        a = analyze_model(model, stream, stream[:2_000])
        assert _verdict(framework_claims({"attn0": a}), words) == expected


def test_copying_and_skip_trigram_claims_controls():
    """Positive: a one-layer model whose every head copies (OV = +I on tokens); negative: random weights."""
    from tests.planted import copying_model

    planted = copying_model(V=40)
    with torch.no_grad():  # make all three heads copying heads
        a = planted.blocks[0].attn
        for h in (1, 2):
            a.W_V[h], a.W_O[h], a.W_Q[h], a.W_K[h] = a.W_V[0], a.W_O[0], a.W_Q[0], a.W_K[0]
    random = Transformer(ModelConfig(**{**planted.cfg.to_dict(), "seed": 5}))
    stream = _stream(40, 20_000)
    for model, expected in ((planted, "reproduced"), (random, "not reproduced")):
        claims = framework_claims({"attn1": analyze_model(model, stream, stream[:2_000], n_text=8)})
        assert _verdict(claims, "copying heads") == expected
        assert _verdict(claims, "skip-trigrams") == expected


def test_term_importance_claim_controls(two_layer):
    """Positive: the planted induction circuit on text that repeats (its heads carry the loss, virtual heads none);
    negative: random weights (heads add nothing)."""
    planted = induction_model()
    seq = _stream(planted.cfg.d_vocab, 23)
    repeating = np.concatenate([np.concatenate([[0], seq, seq])] * 800)
    a = analyze_model(planted, repeating, repeating[:4_000], n_text=16, trigram_corpus_tokens=10_000)
    assert _verdict(framework_claims({"attn2": a}), "Term importance") == "reproduced"
    assert _verdict(framework_claims({"attn2": two_layer["random"]}), "Term importance") == "not reproduced"

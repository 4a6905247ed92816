"""Skip-trigrams, score attribution, term importance and the softmax caveat, on planted circuits."""

import numpy as np
import pytest
import torch
from transformer_lens import FactoredMatrix

from circuitlab.circuits import (
    competition_model, head_results, induction_mechanism, order_expansion, ov_circuit, positional_content_split,
    previous_token_score, repeated_random_tokens, skip_trigram_bugs, skip_trigram_table, softmax_competition,
    term_importance, top1_diagonal_accuracy, top_entries,
)
from circuitlab.circuits.circuits import direct_path, unembedding
from circuitlab.circuits.heads import attention_patterns
from circuitlab.circuits.paths import unembed
from circuitlab.heads import Head
from circuitlab.model import ModelConfig, Transformer
from circuitlab.model.bridge import to_transformer_bridge
from tests.planted import copying_model, induction_model, previous_token_model, virtual_head_model


def test_top_entries_chunked_equal_the_dense_top_k():
    g = torch.Generator().manual_seed(0)
    fm = FactoredMatrix(torch.randn(50, 6, generator=g), torch.randn(6, 40, generator=g))
    dense = fm.AB
    got = top_entries(fm, k=10, chunk=7)
    want = dense.flatten().topk(10)
    assert [(r * 40 + c) for r, c, _ in got] == want.indices.tolist()
    rows, cols = torch.tensor([3, 9, 11]), torch.tensor([0, 5])
    best = top_entries(fm, k=1, rows=rows, cols=cols, chunk=2)[0]
    sub = dense[rows][:, cols]
    i, j = divmod(int(sub.argmax()), 2)
    assert best[2] == pytest.approx(float(sub.max()), rel=1e-5)
    assert (best[0], best[1]) == (int(rows[i]), int(cols[j]))


def test_top1_diagonal_accuracy_of_copying_and_anti_copying_heads():
    m = copying_model()
    acc = top1_diagonal_accuracy(ov_circuit(m), chunk=5)
    assert acc[0, 0] == 1.0 and acc[0, 1] == 0.0
    dense = ov_circuit(m).AB[0, 2]
    assert acc[0, 2] == pytest.approx(float((dense.argmax(-1) == torch.arange(12)).float().mean()))


def test_skip_trigram_table_reads_a_copying_head():
    m = copying_model()
    pool = torch.arange(12)
    t = skip_trigram_table(m, 0, 0, pool, n_sources=4)
    for row in t.rows:  # QK = +I and OV = +I: each token attends to itself and raises itself
        assert row.destination_ids[0] == row.source_id == row.out_ids[0]
    anti = skip_trigram_table(m, 0, 1, pool, n_sources=4)
    assert all(row.out_ids[0] != row.source_id for row in anti.rows)  # anti-copying lowers its own token


def _factored_bug_model():
    """Tokens: 0 BOS, 1 source 'keep', 2 'in', 3 'at', 4 'mind', 5 'bay', 6/7 filler. 'in' and 'at' attend to
    'keep'; attending to 'keep' raises 'mind' and 'bay' (factored), so it also raises 'keep ... in bay'."""
    V = 8
    m = Transformer(ModelConfig(n_layers=1, d_model=V, n_heads=1, d_head=V, n_ctx=16, d_vocab=V,
                                positional_embedding_type="shortformer"))
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E.copy_(torch.eye(V)), m.W_U.copy_(torch.eye(V))
        a = m.blocks[0].attn
        a.W_Q[0, 2, 0] = a.W_Q[0, 3, 0] = 3.0
        a.W_K[0, 1, 0] = 3.0
        a.W_V[0, 1, 1] = 1.0
        a.W_O[0, 1, 4] = 4.0
        a.W_O[0, 1, 5] = 3.5
    corpus = np.array([0, 1, 6, 2, 4, 7, 1, 7, 3, 5, 6] * 50)  # keep .. in mind .. keep .. at bay
    return m, corpus


def test_skip_trigram_bug_is_found_from_the_factored_form():
    m, corpus = _factored_bug_model()
    table = skip_trigram_table(m, 0, 0, torch.arange(1, 8), n_sources=1)
    assert table.rows[0].source_id == 1
    assert set(table.rows[0].destination_ids[:2]) == {2, 3} and set(table.rows[0].out_ids[:2]) == {4, 5}
    bugs = skip_trigram_bugs(table, corpus, window=6)
    assert len(bugs) == 1
    b = bugs[0]
    pairs = {(t.dest, t.out) for t in b.intended}
    assert pairs == {("2", "4"), ("3", "5")} and b.bug.count == 0
    assert (b.bug.dest, b.bug.out) in {("2", "5"), ("3", "4")}


def test_softmax_competition_breaks_the_skip_trigram_table():
    m = competition_model()
    c = softmax_competition(m, 0, 0, source=1, dest=3, thief=2, out=4)
    assert c.attention_to_source_alone > 0.9 and c.attention_to_source_with_thief < 0.05
    assert c.gap > 3.0  # the table predicts X raised by ~3.2; it is not raised at all
    neutral = softmax_competition(m, 0, 0, source=1, dest=3, thief=6 - 1, out=4)  # Y: scores 0, no competition
    assert abs(neutral.gap) < 0.3


def test_positional_content_split_of_planted_heads():
    m = previous_token_model()
    tokens = repeated_random_tokens(15, 1, 6, 10, bos=0)
    split = positional_content_split(m, tokens, previous_token_score(m, tokens))
    assert split.positional[0, 0] > 0.95 and split.roles[0][0] == "previous-token"
    total = split.positional + split.content + split.mixed
    torch.testing.assert_close(total, torch.ones_like(total))
    ind = induction_model(n_ctx=48)
    toks = repeated_random_tokens(20, 2, 6, 200, bos=0)
    s2 = positional_content_split(ind, toks)
    assert s2.content[1, 1] > 0.95 and s2.roles[1][1] == "content"  # the induction head matches on content
    assert s2.positional[0, 0] > 0.95 and s2.roles[0][0] == "positional"


def test_induction_mechanism_finds_the_planted_k_composition():
    m = induction_model()
    mech = induction_mechanism(m, 1, 1, n_tokens=20)
    assert mech.k_composes_with == Head(0, 0) and mech.k_composition_share > 0.95
    assert sum(mech.shares.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="earlier layer"):
        induction_mechanism(m, 0, 0)


def test_frozen_pattern_paths_sum_to_the_model():
    m = Transformer(ModelConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, n_ctx=16, d_vocab=40,
                                positional_embedding_type="standard", seed=3))
    tokens = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(0))
    R = order_expansion(m, tokens, attention_patterns(m, tokens))
    assert R.shape[0] == 4
    torch.testing.assert_close(R.sum(0) @ m.W_U, m(tokens), rtol=1e-4, atol=1e-4)
    _, _, results = head_results(m, tokens)
    _, cache = m.run_with_cache(tokens)
    torch.testing.assert_close(results[2], cache["blocks.2.attn.hook_result"], rtol=1e-4, atol=1e-5)


def test_paths_with_a_final_norm_sum_to_the_model_and_its_circuits_use_the_centred_unembedding():
    m = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=16, d_vocab=40, final_norm=True,
                                seed=3))
    with torch.no_grad():
        m.W_U.add_(1.0)  # a large all-ones component of W_U, which the centring norm never lets act
    tokens = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(0))
    R = order_expansion(m, tokens, attention_patterns(m, tokens))
    torch.testing.assert_close(unembed(m, R.sum(0)), m(tokens), rtol=1e-4, atol=1e-4)
    ti = term_importance(m, tokens)
    assert ti.cumulative_loss[-1] == pytest.approx(ti.model_loss, rel=1e-4)
    U = unembedding(m)
    torch.testing.assert_close(U.sum(0), torch.zeros(40), atol=1e-5, rtol=0)
    # a head's direct effect through the norm: C(x W_OV) / s W_U = (x W_OV / s) U, whatever W_U's mean row
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    ov = ov_circuit(m)
    torch.testing.assert_close((m.W_E @ m.W_V[1, 2] @ m.W_O[1, 2]) @ U, ov[1, 2].AB, rtol=1e-4, atol=1e-4)
    s = (x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    torch.testing.assert_close(m.ln_final(x) @ m.W_U, (x / s) @ U, rtol=1e-4, atol=1e-4)  # U: no centring needed
    assert not torch.allclose(m.ln_final(x) @ m.W_U, (x / s) @ m.W_U, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(m.W_E @ m.W_U, direct_path(m))  # the direct path goes through the norm


def test_term_importance_puts_a_virtual_head_at_order_two():
    m = virtual_head_model()
    V = m.cfg.d_vocab
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(1, V, (8, 2), generator=g)
    tokens = torch.cat([torch.zeros(8, 1, dtype=torch.long), pairs.repeat(1, 11)], 1)  # BOS a b a b ...
    ti = term_importance(m, tokens)
    assert ti.cumulative_loss[-1] == pytest.approx(ti.model_loss, rel=1e-4)
    assert ti.improvement[0] == pytest.approx(0.0, abs=1e-4)  # W_U reads nothing of the embedding
    assert ti.cumulative_loss[1] == pytest.approx(ti.uniform_loss, abs=1e-4)  # no single head helps at all
    # all of the gain through the virtual head (positions 0 and 1 have no token two back and stay wrong)
    assert ti.improvement[2] > 1.0


def test_term_importance_of_the_induction_head_is_order_one():
    m = induction_model()
    tokens = repeated_random_tokens(20, 2, 6, 200, bos=0)
    ti = term_importance(m, tokens)
    # K-composition shapes the pattern, but the head's OV reads the token itself: an individual-head term
    assert ti.order_1_by_layer[1] > 1.0 and abs(ti.improvement[2]) < 0.05
    assert float(ti.order_1_by_head[1, 1]) == pytest.approx(float(ti.order_1_by_head.max()))


def test_path_analyses_refuse_models_outside_the_papers_setting():
    m = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=20, layer_norm=True))
    with pytest.raises(ValueError, match="without LayerNorm"):
        term_importance(m, torch.zeros(1, 8, dtype=torch.long))


def test_path_analyses_run_on_a_transformer_lens_bridge():
    m = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=48, d_vocab=60,
                                positional_embedding_type="standard", seed=1))
    bridge = to_transformer_bridge(m)
    tokens = repeated_random_tokens(20, 2, 4, 60, bos=0)
    a, b = term_importance(m, tokens), term_importance(bridge, tokens)
    assert a.cumulative_loss == pytest.approx(b.cumulative_loss, rel=1e-4)
    assert b.cumulative_loss[-1] == pytest.approx(b.model_loss, rel=1e-4)
    sa, sb = positional_content_split(m, tokens), positional_content_split(bridge, tokens)
    torch.testing.assert_close(sa.positional, sb.positional, rtol=1e-3, atol=1e-4)
    ma, mb = induction_mechanism(m, 1, 2, n_tokens=20), induction_mechanism(bridge, 1, 2, n_tokens=20)
    assert ma.shares == pytest.approx(mb.shares, rel=1e-3, abs=1e-4)
    torch.testing.assert_close(top1_diagonal_accuracy(ov_circuit(m)), top1_diagonal_accuracy(ov_circuit(bridge)))
    ta = skip_trigram_table(m, 0, 1, torch.arange(1, 60))
    tb = skip_trigram_table(bridge, 0, 1, torch.arange(1, 60))
    assert ta.rows[0].out_ids == tb.rows[0].out_ids


def test_olsson_copying_score_of_planted_heads():
    from circuitlab.circuits import copying_score

    s = copying_score(copying_model(), n_tokens=3, n_repeats=2)
    assert s[0, 0] > 0.8 and s[0, 1] < -0.5 and abs(float(s[0, 2])) < 0.5  # copying, anti-copying, random
    ind = copying_score(induction_model(), n_tokens=10, n_repeats=4)
    assert ind[1, 1] > 0.8  # the induction head copies the token it attends to


def test_olsson_copying_score_is_the_share_of_the_raise_on_the_attended_token():
    """Olsson et al.'s copying evaluator: a head that attends to a token and raises it by 10 and 100 other tokens by 1
    puts ~10/110 of its raise on what it attends to, so it scores ~0.09 (a cosine of the raise with the attention
    would say ~0.7); raising only the attended token scores ~1."""
    from circuitlab.circuits import copying_score
    from circuitlab.model import ModelConfig, Transformer

    V = 1000
    g = torch.Generator().manual_seed(0)

    def head(spill: int) -> Transformer:
        m = Transformer(ModelConfig(n_layers=1, d_model=V, n_heads=1, d_head=V, n_ctx=64, d_vocab=V))
        with torch.no_grad():
            m.W_E.copy_(torch.eye(V)), m.W_pos.zero_(), m.W_U.copy_(torch.eye(V))
            a = m.blocks[0].attn
            a.W_Q[0] = 20 * V**0.5 * torch.eye(V)  # attends to its own token (and its earlier copies), sharply
            a.W_K[0] = torch.eye(V)
            a.W_V[0] = torch.eye(V)
            ov = 10 * torch.eye(V)
            for t in range(V):  # each token also raises `spill` other tokens by 1
                others = torch.randperm(V, generator=g)[: spill + 1]
                ov[t, others[others != t][:spill]] = 1.0
            a.W_O[0] = ov
        return m

    spread = float(copying_score(head(100), n_tokens=25, n_repeats=2)[0, 0])
    clean = float(copying_score(head(0), n_tokens=25, n_repeats=2)[0, 0])
    assert 0.06 < spread < 0.13 and clean > 0.95

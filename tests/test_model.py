import math

import pytest
import torch
from transformer_lens import ActivationCache, FactoredMatrix

from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig, Transformer
from circuitlab.model.bridge import to_transformer_bridge
from circuitlab.training import get_preset

CONFIGS = {
    "shortformer": dict(),
    "standard": dict(positional_embedding_type="standard"),
    "smeared": dict(smeared_keys=True),
    "ln_bias_mlp": dict(layer_norm=True, attn_bias=True, d_mlp=48, positional_embedding_type="standard"),
    "zero_layer": dict(n_layers=0),
    "final_norm": dict(final_norm=True),
    "three_layer": dict(n_layers=3),
}


def make(n_layers=2, **kw) -> Transformer:
    cfg = ModelConfig(n_layers=n_layers, d_model=32, n_heads=4, d_head=8, n_ctx=24, d_vocab=50, **kw)
    model = Transformer(cfg)
    with torch.no_grad():  # non-zero biases, LayerNorm gains and smear alphas, so every term is exercised
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def tokens(batch=3, pos=24, vocab=50):
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", CONFIGS)
def test_fast_and_hooked_paths_agree(name):
    model = make(**CONFIGS[name])
    x = tokens()
    fast = model(x)
    hooked, cache = model.run_with_cache(x)
    assert isinstance(cache, ActivationCache)
    torch.testing.assert_close(fast, hooked, rtol=1e-5, atol=1e-5)
    # and the fast path really is the fused one: no hook ran
    assert not model.has_active_hooks()


@pytest.mark.parametrize("name", ["standard", "ln_bias_mlp"])
def test_logits_match_transformer_lens_native_model(name):
    model = make(**CONFIGS[name])
    bridge = to_transformer_bridge(model)
    x = tokens()
    torch.testing.assert_close(bridge(x), model(x), rtol=1e-5, atol=1e-5)
    # the same hook names carry the same activations
    _, ours = model.run_with_cache(x)
    _, theirs = bridge.run_with_cache(x)
    for name in ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5)


def test_bridge_refuses_what_tl_native_cannot_express():
    with pytest.raises(CircuitlabError, match="standard positions"):
        to_transformer_bridge(make())  # shortformer


def test_cache_has_transformer_lens_hook_names_and_shapes():
    model = make(n_layers=2)
    _, cache = model.run_with_cache(tokens(batch=2, pos=10))
    for name in ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_post",
                 "blocks.0.hook_attn_out", "blocks.1.attn.hook_result"]:
        assert name in cache.keys()
    assert cache["blocks.0.attn.hook_q"].shape == (2, 10, 4, 8)
    assert cache["blocks.0.attn.hook_result"].shape == (2, 10, 4, 32)
    pattern = cache["pattern", 1]  # ActivationCache's TL-style key lookup works on our model
    assert pattern.shape == (2, 4, 10, 10)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 10))
    assert torch.all(pattern.triu(1) == 0), "attention must be causal"
    # per-head results add up to the attention output
    torch.testing.assert_close(cache["blocks.1.attn.hook_result"].sum(2), cache["blocks.1.hook_attn_out"])


def test_zero_layer_model_is_the_bigram_table_W_E_W_U():
    model = make(n_layers=0)
    x = tokens()
    torch.testing.assert_close(model(x), model.W_E[x] @ model.W_U)
    assert model.W_Q.shape == (0, 4, 32, 8)


def test_final_norm_is_layernorm_pre_before_the_unembedding_only():
    model = make(final_norm=True)
    x = tokens()
    _, cache = model.run_with_cache(x)
    resid = cache["blocks.1.hook_resid_post"]
    centred = resid - resid.mean(-1, keepdim=True)
    expected = centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() @ model.W_U
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert "blocks.0.ln1.hook_scale" not in model.hook_dict and "ln_final.hook_scale" in model.hook_dict
    assert model.cfg.normalization_type == "LNPre" and not list(model.ln_final.parameters())
    # a zero-layer model's logits are the direct path through the norm, exactly
    zero = make(n_layers=0, final_norm=True)
    from circuitlab.circuits.circuits import direct_path

    torch.testing.assert_close(zero(x), direct_path(zero)[x], rtol=1e-5, atol=1e-5)
    with pytest.raises(CircuitlabError, match="final_norm is part of layer_norm"):
        ModelConfig(layer_norm=True, final_norm=True)


def test_shortformer_positions_reach_queries_and_keys_but_not_values():
    model = make()
    x = tokens(batch=1)
    _, cache = model.run_with_cache(x)
    W_V = model.blocks[0].attn.W_V
    torch.testing.assert_close(cache["blocks.0.attn.hook_v"], torch.einsum("bpd,hde->bphe", model.W_E[x], W_V))
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], model.W_E[x])
    q_expected = torch.einsum("bpd,hde->bphe", model.W_E[x] + model.W_pos[:24], model.blocks[0].attn.W_Q)
    torch.testing.assert_close(cache["blocks.0.attn.hook_q"], q_expected)


def test_smeared_keys_follow_olsson_formula():
    model = make(smeared_keys=True)
    attn = model.blocks[0].attn
    k = torch.randn(2, 5, 4, 8)
    with torch.no_grad():
        attn.smear_alpha.copy_(torch.tensor([20.0, -20.0, 0.0, 1.0]))
    out = attn.smear(k)
    torch.testing.assert_close(out[:, 0], k[:, 0])  # first position unchanged
    torch.testing.assert_close(out[:, 1:, 0], k[:, 1:, 0], atol=1e-6, rtol=0)  # sigma(20) ~ 1: own key
    torch.testing.assert_close(out[:, 1:, 1], k[:, :-1, 1], atol=1e-6, rtol=0)  # sigma(-20) ~ 0: previous key
    s = torch.sigmoid(torch.tensor(1.0))
    torch.testing.assert_close(out[:, 1:, 3], s * k[:, 1:, 3] + (1 - s) * k[:, :-1, 3])


def test_circuits_are_factored_matrices_in_tl_layout():
    model = make(n_layers=2)
    assert isinstance(model.OV, FactoredMatrix)
    assert model.OV.shape == (2, 4, 32, 32)
    torch.testing.assert_close(model.OV.AB[1, 2], model.blocks[1].attn.W_V[2] @ model.blocks[1].attn.W_O[2])
    torch.testing.assert_close(model.QK.AB[0, 3], model.blocks[0].attn.W_Q[3] @ model.blocks[0].attn.W_K[3].T)
    assert model.W_Q.shape == (2, 4, 32, 8) and model.W_O.shape == (2, 4, 8, 32)
    assert model.W_E.shape == (50, 32) and model.W_U.shape == (32, 50) and model.W_pos.shape == (24, 32)


def test_loss_is_next_token_cross_entropy():
    model = make()
    x = tokens()
    logits = model(x)
    per_token = model(x, return_type="loss", loss_per_token=True)
    expected = -logits.log_softmax(-1)[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
    torch.testing.assert_close(per_token, expected)
    torch.testing.assert_close(model(x, return_type="loss"), expected.mean())


def test_init_is_seeded_and_nanda_init_scales():
    a, b = Transformer(ModelConfig(seed=3)), Transformer(ModelConfig(seed=3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_E, Transformer(ModelConfig(seed=4)).W_E)
    m = Transformer(ModelConfig(n_layers=1, d_model=128, n_heads=4, d_head=32, d_vocab=114, n_ctx=3, d_mlp=512, init="nanda"))
    assert abs(m.W_E.std().item() - 128**-0.5) < 0.01
    assert abs(m.W_U.std().item() - 114**-0.5) < 0.01


@pytest.mark.parametrize("init", ["gpt2", "nanda"])
def test_init_noise_moves_every_random_weight_one_ulp_and_nothing_else(init):
    """The float-noise check's perturbation (`init_noise`): each randomly initialised weight one unit in the last
    place up or down, signs drawn from the noise seed; biases, LayerNorm weights and the init draws untouched."""
    cfg = dict(n_layers=1, d_model=32, n_heads=2, d_head=16, n_ctx=8, d_vocab=40, d_mlp=64, layer_norm=True,
               attn_bias=True, init=init, seed=5)
    base, a, a2, b = (Transformer(ModelConfig(**cfg, init_noise=k)) for k in (0, 1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), a2.parameters()))  # seeded
    assert torch.equal(base.W_E, Transformer(ModelConfig(**cfg)).W_E)  # 0: no noise
    moved = 0
    for (name, p0), pa, pb in zip(base.named_parameters(), a.parameters(), b.parameters()):
        if name.endswith((".b", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", ".w")):
            assert torch.equal(p0, pa), name
            continue
        up = torch.nextafter(p0, torch.tensor(math.inf))
        down = torch.nextafter(p0, torch.tensor(-math.inf))
        assert bool(((pa == up) | (pa == down)).all()), name  # exactly one ulp, each weight
        moved += p0.numel()
        assert 0.4 < (pa == up).float().mean().item() < 0.6, name  # both directions
        assert not torch.equal(pa, pb), name  # another noise seed, other signs
    assert moved > 5000
    with pytest.raises(CircuitlabError, match="init_noise"):
        ModelConfig(init_noise=-1)


def test_bad_configs_and_presets_give_one_line_errors():
    with pytest.raises(CircuitlabError, match="positional_embedding_type"):
        ModelConfig(positional_embedding_type="rotary")
    with pytest.raises(CircuitlabError, match="unknown preset 'attn9'"):
        get_preset("attn9")
    with pytest.raises(ValueError, match="n_ctx"):
        make()(torch.zeros(1, 25, dtype=torch.long))


@pytest.mark.parametrize("name", ["shortformer", "ln_bias_mlp", "zero_layer", "final_norm"])
def test_fused_training_loss_matches_plain_loss_and_gradients(name):
    from circuitlab.model import lm_cross_entropy

    model = make(**CONFIGS[name])
    x = tokens()
    fused = model(x, return_type="loss")  # fast path: cross-entropy fused with the unembedding
    g_fused = torch.autograd.grad(fused, list(model.parameters()), allow_unused=True)  # 0 layers: W_pos unused
    plain = lm_cross_entropy(model(x), x)
    g_plain = torch.autograd.grad(plain, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(fused, plain)
    for (n, _), a, b in zip(model.named_parameters(), g_fused, g_plain):
        assert (a is None) == (b is None), n
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")
    with torch.no_grad():  # no gradients wanted: the same value
        torch.testing.assert_close(model(x, return_type="loss"), plain)

"""Patching, ablation, direct logit attribution and the logit lens: on a planted induction circuit where the right
answer is known, on circuitlab's model and its TransformerBridge twin alike, and on a tiny random GPT-2 booted
offline from a folder through `load_model`."""

import pytest
import torch

from circuitlab.errors import CircuitlabError
from circuitlab.heads import Head
from circuitlab.model import ModelConfig, Transformer
from circuitlab.patching import (
    LogitDiff, ablate_each_head, ablate_heads, agreement, attribution_patch, direct_logit_attribution, logit_lens,
    patch_heads, patch_layers, path_patch,
)
from tests.planted import induction_model

V, N_CTX, HALF = 40, 24, 8
PREV, INDUCTION = (0, 0), (1, 1)


@pytest.fixture(scope="module")
def planted():
    """The planted induction circuit (0.0 previous-token head, 1.1 induction head reading it through K) on
    clean = [bos, x1..x8, x1..x7] (the answer x8 is predicted from the earlier copy) and corrupted = [bos, y1..y8,
    x1..x7] (no earlier copy: the model has no reason to say x8); metric logit(x8) - logit(y8)."""
    m = induction_model(V=V, n_ctx=N_CTX)
    g = torch.Generator().manual_seed(0)
    clean, corrupt, ans, wrong = [], [], [], []
    for _ in range(6):
        perm = torch.randperm(V - 1, generator=g)[: 2 * HALF] + 1
        x, y = perm[:HALF], perm[HALF:]
        clean.append(torch.cat([torch.tensor([0]), x, x[:-1]]))
        corrupt.append(torch.cat([torch.tensor([0]), y, x[:-1]]))
        ans.append(x[-1])
        wrong.append(y[-1])
    return m, torch.stack(clean), torch.stack(corrupt), LogitDiff(torch.stack(ans), torch.stack(wrong))


def _others(t: torch.Tensor, *keep) -> torch.Tensor:
    t = t.clone()
    for k in keep:
        t[k] = float("nan")
    return t[~t.isnan()]


def test_activation_patching_finds_the_planted_heads(planted):
    m, clean, corrupt, metric = planted
    r = patch_heads(m, clean, corrupt, metric)
    assert r.clean > 15 and r.corrupted < 0 and r.axes == ["layer", "head"] and r.shape == [2, 2]
    n = r.normalized()
    assert n[INDUCTION] == pytest.approx(1.0, abs=0.01)  # the induction head's output alone restores the answer
    # the previous-token head alone makes 1.1 attend to the token after x7 -- which is y8 in the corrupted run
    assert n[PREV] < -0.5
    assert _others(n, INDUCTION, PREV).abs().max() < 0.01
    # per position: only the induction head's output at the last position matters
    per = patch_heads(m, clean, corrupt, metric, per_position=True)
    assert per.shape == [2, 2 * HALF, 2] and per.normalized()[1, -1, 1] == pytest.approx(1.0, abs=0.01)
    assert _others(per.normalized()[1, :, 1], -1).abs().max() < 0.01
    # the key of x8's position (HALF) is where the induction head's match lives
    keys = patch_heads(m, clean, corrupt, metric, site="k", per_position=True).normalized()[1, :, 1]
    assert keys.abs().argmax() == HALF and _others(keys, HALF).abs().max() < 0.01
    pattern = patch_heads(m, clean, corrupt, metric, site="pattern").normalized()
    assert pattern[INDUCTION] < -0.5 and pattern[PREV].abs() < 0.01  # the pattern attends to x8's place: y8 there
    # the residual stream before layer 1 carries everything at x8's position
    resid = patch_layers(m, clean, corrupt, metric, "resid_pre").normalized()
    assert resid.shape == (2, 2 * HALF) and resid[1].argmax() == HALF and resid[1, HALF] == pytest.approx(1, abs=0.01)
    # noising: the clean run with one head's corrupted output
    noise = patch_heads(m, clean, corrupt, metric, direction="noise").normalized()
    assert noise[INDUCTION] == pytest.approx(0.0, abs=0.01) and noise[1, 0] == pytest.approx(1.0, abs=0.01)


def test_path_patching_separates_the_paths(planted):
    m, clean, corrupt, metric = planted
    via = {s: path_patch(m, clean, corrupt, metric, receivers=[INDUCTION], receiver_sites=(s,)).normalized()
           for s in ("q", "k", "v")}
    assert via["k"][PREV] < 0.3  # 0.0 -> 1.1 through the key: the K-composition path carries the effect
    assert via["q"][PREV] == pytest.approx(1.0, abs=0.01) and via["v"][PREV] == pytest.approx(1.0, abs=0.01)
    assert (via["k"][1] == 1.0).all()  # senders in the receiver's layer have no path to it
    logits = path_patch(m, clean, corrupt, metric).normalized()
    assert logits[INDUCTION] == pytest.approx(0.0, abs=0.01)  # 1.1 writes the answer directly
    assert logits[PREV] == pytest.approx(1.0, abs=0.01)  # 0.0 writes nothing the unembedding reads


def test_attribution_patching_ranks_as_exact_patching_does(planted):
    m, clean, corrupt, metric = planted
    exact, estimate = patch_heads(m, clean, corrupt, metric), attribution_patch(m, clean, corrupt, metric)
    a = agreement(estimate, exact, top_k=2)
    assert a.spearman > 0.9 and a.top_k_overlap == 1.0
    assert estimate.normalized()[INDUCTION] == pytest.approx(1.0, abs=0.05)
    resid = attribution_patch(m, clean, corrupt, metric, site="resid_pre", per_position=True)
    # it finds the position, but with the wrong sign: patching x8's residual moves the induction head's sharp
    # attention, which the gradient on the corrupted run cannot see (the known failure of the linear estimate
    # through saturated softmax, Kramar et al. 2024) -- exact patching is the check
    assert resid.shape == [2, 2 * HALF] and resid.normalized()[1].abs().argmax() == HALF
    exact_resid = patch_layers(m, clean, corrupt, metric, "resid_pre")
    assert agreement(resid, exact_resid).top_k_overlap >= 0.5 and resid.normalized()[1, HALF] < 0
    with pytest.raises(CircuitlabError, match="cannot compare"):
        agreement(resid, exact)


def test_ablations_of_the_planted_heads(planted):
    m, clean, _, metric = planted
    for kind in ("zero", "mean", "resample"):
        r = ablate_each_head(m, clean, metric, kind)
        t = r.tensor()
        assert t[INDUCTION] < 0.25 * r.clean, kind  # the circuit's heads matter
        assert t[PREV] < 0.5 * r.clean, kind
        assert (t[1, 0] - r.clean).abs() < 0.05 and (t[0, 1] - r.clean).abs() < 0.05, kind  # the others do not
        assert ablate_heads(m, clean, metric, [Head(*INDUCTION)], kind) == pytest.approx(float(t[INDUCTION]), abs=1e-4)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    per_template = ablate_each_head(m, clean, metric, "mean", groups=groups)
    assert per_template.tensor()[INDUCTION] < 0.5 * per_template.clean
    with pytest.raises(CircuitlabError, match="ablation must be"):
        ablate_heads(m, clean, metric, [Head(1, 1)], "median")


def test_direct_logit_attribution_and_logit_lens(planted):
    m, clean, _, metric = planted
    d = direct_logit_attribution(m, clean, metric.answer, metric.wrong, by_source=True)
    assert d.explained == pytest.approx(d.total, abs=1e-3) and d.total > 15
    assert d.heads[1][1] == pytest.approx(d.total, abs=0.05) and abs(d.heads[0][0]) < 1e-3 and d.mlps == []
    by = torch.tensor(d.heads_by_source)  # [layer, head, source]: 1.1's contribution comes from x8's position
    assert by[1, 1].argmax() == HALF and by.sum(-1)[1, 1] == pytest.approx(d.heads[1][1], abs=1e-3)
    lens = logit_lens(m, clean, metric.answer, metric.wrong)
    assert lens.sites[-1] == "blocks.1.hook_resid_post" and lens.logit_diff[-1] == pytest.approx(d.total, abs=1e-3)
    assert abs(lens.logit_diff[1]) < 0.01  # before layer 1 nothing has moved the answer


def _twins():
    """circuitlab's model with LayerNorm, MLPs and non-trivial biases, and the same weights as a TransformerBridge."""
    from circuitlab.model.bridge import to_transformer_bridge

    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=16, d_vocab=50, d_mlp=64, layer_norm=True,
                      positional_embedding_type="standard", attn_bias=True)
    m = Transformer(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("b_O", ".b", ".w")):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    bridge = to_transformer_bridge(m)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return m, bridge, g


def test_every_function_gives_the_same_on_the_bridge_as_on_our_model():
    m, bridge, g = _twins()
    clean, corrupt = torch.randint(0, 50, (4, 10), generator=g), torch.randint(0, 50, (4, 10), generator=g)
    metric = LogitDiff(torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8]))
    calls = [lambda x: patch_heads(x, clean, corrupt, metric).tensor(),
             lambda x: patch_heads(x, clean, corrupt, metric, site="v", per_position=True).tensor(),
             lambda x: patch_layers(x, clean, corrupt, metric, "mlp_out").tensor(),
             lambda x: path_patch(x, clean, corrupt, metric, receivers=[(1, 0)]).tensor(),
             lambda x: attribution_patch(x, clean, corrupt, metric).tensor(),
             lambda x: ablate_each_head(x, clean, metric, "resample").tensor(),
             lambda x: torch.tensor(direct_logit_attribution(x, clean, metric.answer, metric.wrong).heads),
             lambda x: torch.tensor(logit_lens(x, clean, metric.answer, metric.wrong).logit_diff)]
    for call in calls:
        torch.testing.assert_close(call(m), call(bridge), atol=1e-4, rtol=1e-4)
    d = direct_logit_attribution(m, clean, metric.answer, metric.wrong)
    assert d.bias != 0 and d.explained == pytest.approx(d.total, abs=1e-4)  # LayerNorm-aware, biases included
    # reading the logits at the metric's position only (the forward stopped at the final residual) = full logits
    full = lambda logits: metric(logits)  # noqa: E731  (no at_position: the whole forward pass)
    for x in (m, bridge):
        torch.testing.assert_close(patch_heads(x, clean, corrupt, metric).tensor(),
                                   patch_heads(x, clean, corrupt, full).tensor(), atol=1e-5, rtol=1e-5)
        assert not any(hp.fwd_hooks for hp in x.hook_dict.values())  # the stopped pass left no hook behind


def test_prompts_of_different_lengths_are_refused(planted):
    m, clean, corrupt, metric = planted
    with pytest.raises(CircuitlabError, match="same shape"):
        patch_heads(m, clean, corrupt[:, :-1], metric)
    with pytest.raises(CircuitlabError, match="no 'mlp_out'"):
        patch_layers(m, clean, corrupt, metric, "mlp_out")  # attention-only
    with pytest.raises(CircuitlabError, match="head site"):
        patch_heads(m, clean, corrupt, metric, site="resid_pre")


def test_load_model_boots_a_local_folder_offline_and_runs_everything(tiny_gpt2):
    from circuitlab import load_model

    model = load_model(tiny_gpt2)
    clean = model.to_tokens(["When Mary and John went to the store, John gave a drink to"])
    corrupt = model.to_tokens(["When Mary and John went to the store, Mary gave a drink to"])
    assert clean.shape == corrupt.shape
    metric = LogitDiff(model.to_tokens(" Mary", prepend_bos=False)[0, :1],
                       model.to_tokens(" John", prepend_bos=False)[0, :1])
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert patch_heads(model, clean, corrupt, metric).shape == [L, H]
    assert patch_layers(model, clean, corrupt, metric, "mlp_out").shape == [L, clean.shape[1]]
    assert path_patch(model, clean, corrupt, metric, receivers=[(1, 0)]).shape == [L, H]
    assert attribution_patch(model, clean, corrupt, metric).shape == [L, H]
    assert ablate_each_head(model, clean, metric, "zero").shape == [L, H]
    d = direct_logit_attribution(model, clean, metric.answer, metric.wrong)
    assert d.explained == pytest.approx(d.total, abs=1e-4) and len(d.mlps) == L
    assert logit_lens(model, clean, metric.answer, metric.wrong).logit_diff[-1] == pytest.approx(d.total, abs=1e-4)


def test_load_model_refuses_bad_input_in_one_line(tmp_path, tiny_gpt2, monkeypatch):
    from circuitlab import load_model
    from circuitlab.model import pretrained

    with pytest.raises(CircuitlabError, match="neither a local folder nor in the Hugging Face cache"):
        load_model("no-such-org/no-such-model-xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CircuitlabError, match="no config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tiny_gpt2 / "config.json").read_text())
    with pytest.raises(CircuitlabError, match="has no weights"):
        load_model(tmp_path / "noweights")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(CircuitlabError, match="not a .gguf"):
        load_model(tmp_path / "model.bin")
    monkeypatch.setattr(pretrained, "_available_bytes", lambda: 1000)  # a machine with 1 kB free
    with pytest.raises(CircuitlabError, match="GiB of memory is available"):
        load_model(tiny_gpt2)


def test_the_readme_patching_example_runs(tiny_gpt2):
    """The README's activation-patching example, on the tiny GPT-2 folder instead of models/gpt2."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Pretrained models and patching", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"models/gpt2"' in code and len(code.strip().splitlines()) <= 12
    scope: dict = {}
    exec(code.replace('"models/gpt2"', repr(str(tiny_gpt2))), scope)  # noqa: S102
    assert scope["heads"].shape == [2, 4] and scope["direct"].shape == (2, 4)


def test_the_batch_grows_at_the_first_patched_layer_with_the_same_results(tiny_gpt2):
    """Layers before the first patched one run once; the batch is repeated at that layer's residual stream. Same
    numbers as repeating the prompts from the start, on circuitlab's model (where it grows) and on bridges (where
    Hugging Face's attention mask, made for the prompts' batch, makes it fall back)."""
    from circuitlab import load_model
    from circuitlab.patching.activation import head_masks
    from circuitlab.patching.common import _NO_EXPAND, cache_sites, run_patches

    m, bridge, g = _twins()
    gpt2 = load_model(tiny_gpt2)
    for model in (m, bridge, gpt2):
        V = model.cfg.d_vocab
        clean, corrupt = torch.randint(0, V, (3, 9), generator=g), torch.randint(0, V, (3, 9), generator=g)
        metric = LogitDiff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
        name = "blocks.1.attn.hook_z"
        src = cache_sites(model, clean, [name])[name]
        masks, _ = head_masks("z", tuple(src.shape[1:]), model.cfg.n_heads, True)
        grown = run_patches(model, corrupt, metric, {name: (src, masks)})
        plain = run_patches(model, corrupt, metric, {name: (src, masks)}, expand=False)
        torch.testing.assert_close(grown, plain, atol=1e-5, rtol=1e-5)
    assert m not in _NO_EXPAND and gpt2 in _NO_EXPAND  # ours really grew; the GPT-2 fell back


def test_a_rotary_gqa_model_works_too(tiny_gpt2, tmp_path):
    """A tiny random Llama (rotary positions, RMSNorm, grouped key/value heads) saved to a folder: every function
    runs, and the logit attribution adds up (no positional embedding to attribute)."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from circuitlab import load_model

    d = tmp_path / "tiny-llama"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=300, max_position_embeddings=64,
                                     bos_token_id=0, eos_token_id=0)).save_pretrained(d)
    for f in tiny_gpt2.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            shutil.copy(f, d / f.name)
    model = load_model(d)
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, 300, (3, 8), generator=g), torch.randint(1, 300, (3, 8), generator=g)
    metric = LogitDiff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
    assert patch_heads(model, clean, corrupt, metric).shape == [2, 4]
    assert patch_heads(model, clean, corrupt, metric, site="k").shape == [2, 2]  # grouped keys: per key/value head
    assert attribution_patch(model, clean, corrupt, metric, site="v").shape == [2, 2]
    assert path_patch(model, clean, corrupt, metric, receivers=[(1, 0)]).shape == [2, 4]
    d = direct_logit_attribution(model, clean, metric.answer, metric.wrong)
    assert d.explained == pytest.approx(d.total, abs=1e-4)
    assert logit_lens(model, clean, metric.answer, metric.wrong).logit_diff[-1] == pytest.approx(d.total, abs=1e-4)


def test_reusing_clean_runs_runs_each_clean_and_corrupted_run_once_with_the_same_results():
    """Path patching's steps (the IOI experiment's four) each start from the same clean and corrupted runs: inside
    `reusing_clean_runs` each runs once, on our model and on the bridge, and every number is the same to the bit;
    a weight changed in place or a hook left on the model means running again."""
    from circuitlab.patching import path_attribution, reusing_clean_runs

    m, bridge, g = _twins()
    clean, corrupt = torch.randint(0, 50, (4, 10), generator=g), torch.randint(0, 50, (4, 10), generator=g)
    ans, wrong = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])

    def steps(x):  # as analyze_ioi's steps call them: a new metric object each, on the same tensors
        out = []
        for receivers in ("logits", [(1, 0)], [(1, 2)]):
            for f in (path_attribution, path_patch):
                r = f(x, clean, corrupt, LogitDiff(ans, wrong), receivers, ("q",))
                out += [r.tensor(), torch.tensor([r.clean, r.corrupted])]
        return out

    for x in (m, bridge):
        calls = []
        forward = x.forward
        x.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]
        try:
            plain = steps(x)
            n_plain = len(calls)
            with reusing_clean_runs():
                calls.clear()
                reused = steps(x)
                n_reused = len(calls)
                # an in-place change of a weight: the clean runs are computed again, and give other numbers
                with torch.no_grad():
                    next(iter(x.parameters())).mul_(1.5)
                calls.clear()
                changed = steps(x)
                assert len(calls) == n_reused and not torch.equal(changed[1], reused[1])
                with torch.no_grad():
                    next(iter(x.parameters())).div_(1.5)
                # a hook left on the model: nothing is reused
                handle = x.hook_dict["blocks.0.hook_resid_pre"].register_forward_hook(lambda *a: None)
                calls.clear()
                steps(x)
                handle.remove()
                assert len(calls) == n_plain
            calls.clear()
            steps(x)
            assert len(calls) == n_plain  # outside the block nothing is kept
        finally:
            del x.forward
        assert all(torch.equal(a, b) for a, b in zip(plain, reused))
        assert n_reused <= n_plain - 4 * (3 * 2 - 1)  # 4 clean/corrupted runs per call, the first call's kept
    from circuitlab.patching.common import cache_sites

    with reusing_clean_runs():  # a caller that writes into a kept activation makes it stale: it is computed again
        first = cache_sites(m, clean, ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"]
        kept = first.clone()
        assert cache_sites(m, clean, ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"] is first
        first.add_(1.0)
        again = cache_sites(m, clean, ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"]
        assert again is not first and torch.equal(again, kept)

"""circuitlab's causal-attention kernel for heads of 16 (`model.attention`, attention16.c) against torch's.

The kernel sums in another order than torch's, so these compare within float32 rounding, and check what the design
promises: the same bits on any thread count, the fast path equal to the hooked path with it, torch's kernel for
what it does not take, a plain fallback without a compiler, no change to the process's float mode, and a resumed
run keeping the kernel it was trained with."""

import json

import pytest
import torch
import torch.nn.functional as F

from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig, Transformer, attention

needs_kernel = pytest.mark.skipif(not attention.available(),
                                  reason=f"circuitlab's attention kernel does not build here: {attention.build_error()}")


def fused_qkv(B, T, H, seed=0):
    """q, k, v as the fast path makes them: [B, T, H, 16] views of one fused product, and an output gradient."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3, H, 16, generator=g, requires_grad=True)
    return qkv, torch.randn(B, T, H, 16, generator=g)


def run(qkv, grad, name):
    with attention.forced(name):
        q, k, v = qkv.unbind(2)
        out = attention.causal_attention(q, k, v)
        out.backward(grad)
    got = out.detach(), qkv.grad.clone()
    qkv.grad = None
    return got


@needs_kernel
@pytest.mark.parametrize("B,T,H", [(8, 128, 4), (2, 37, 3), (1, 1, 2), (3, 16, 1), (2, 512, 2)])
def test_kernel_matches_torch_attention_and_its_gradients(B, T, H):
    qkv, grad = fused_qkv(B, T, H)
    ours, theirs = run(qkv, grad, "c16"), run(qkv, grad, "torch")
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=3e-6)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=2e-5)
    # and it is causal: a change at the last position moves no earlier output
    with torch.no_grad(), attention.forced("c16"):
        moved = qkv.detach().clone()
        moved[:, -1] += 1.0
        q, k, v = moved.unbind(2)
        assert torch.equal(attention.causal_attention(q, k, v)[:, :-1], ours[0][:, :-1])


@needs_kernel
def test_kernel_takes_any_strides_with_a_contiguous_head_dimension():
    """Separate tensors, a transposed-then-back layout, and an output gradient that is not contiguous."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 20, 16, generator=g).transpose(1, 2).requires_grad_() for _ in range(3))
    grad = torch.randn(2, 20, 16, 3, generator=g).transpose(2, 3)  # stride(-1) != 1: copied by the kernel
    grads = {}
    for name in ("c16", "torch"):
        with attention.forced(name):
            out = attention.causal_attention(q, k, v)
            out.backward(grad)
        grads[name] = (out.detach(), *(t.grad.clone() for t in (q, k, v)))
        for t in (q, k, v):
            t.grad = None
    for a, b in zip(grads["c16"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


@needs_kernel
def test_kernel_gives_the_same_bits_on_one_and_two_threads():
    before = torch.get_num_threads()
    qkv, grad = fused_qkv(4, 70, 4, seed=5)
    try:
        got = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            got[n] = run(qkv, grad, "c16")
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(got[1], got[2]))


def test_what_the_kernel_does_not_take_goes_to_torch_unchanged():
    """d_head other than 16, more than 512 positions, float64: torch's scaled_dot_product_attention, to the bit."""
    g = torch.Generator().manual_seed(0)
    for shape, dtype in (((2, 10, 3, 8), torch.float32), ((1, 513, 1, 16), torch.float32),
                         ((2, 10, 3, 16), torch.float64)):
        q, k, v = (torch.randn(*shape, generator=g, dtype=dtype) for _ in range(3))
        expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True).transpose(1, 2)
        assert not attention.takes(q)
        assert torch.equal(attention.causal_attention(q, k, v), expected)


@needs_kernel
def test_loading_the_kernel_leaves_denormals_alone():
    """-ffast-math's start file would set flush-to-zero for the whole process; the kernel is linked without it."""
    assert attention.kernel() is not None
    tiny = torch.tensor([1e-39])
    assert float(tiny * 1.0) != 0.0


@needs_kernel
@pytest.mark.parametrize("kw", [dict(), dict(positional_embedding_type="standard"), dict(smeared_keys=True),
                                dict(layer_norm=True, attn_bias=True, d_mlp=48, positional_embedding_type="standard")])
def test_fast_path_with_the_kernel_equals_the_hooked_path(kw):
    """The fast path (the kernel, heads of 16) against the hooked path (explicit patterns): logits and gradients."""
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, n_ctx=40, d_vocab=50, **kw)
    model = Transformer(cfg)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    x = torch.randint(0, 50, (3, 40), generator=torch.Generator().manual_seed(0))
    with attention.forced("c16"):
        fast = model(x, return_type="loss")
        fast_grads = torch.autograd.grad(fast, list(model.parameters()))
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda pattern, hook: pattern)]):
        assert model.has_active_hooks()  # the hooked path: explicit scores and patterns
        hooked = model(x, return_type="loss")
        hooked_grads = torch.autograd.grad(hooked, list(model.parameters()))
    torch.testing.assert_close(fast, hooked, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, hooked_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture
def rebuilt(monkeypatch):
    """Clears the kernel and backend caches, and again after the test (the next use rebuilds the kernel)."""
    def clear():
        attention.kernel.cache_clear()
        attention._chosen.cache_clear()
        attention._build_error.clear()
    clear()
    yield monkeypatch
    monkeypatch.undo()
    clear()


def test_without_a_compiler_auto_takes_torch_and_a_forced_kernel_is_an_error(rebuilt):
    rebuilt.setattr(attention.shutil, "which", lambda name: None)
    rebuilt.setattr(attention, "_cpu_flags", lambda: ("AuthenticAMD", {"avx512f"}))
    assert attention.kernel() is None and "no C compiler" in attention.build_error()
    rebuilt.setenv(attention.ENV, "auto")
    assert attention.backend() == "torch"
    attention._chosen.cache_clear()
    rebuilt.setenv(attention.ENV, "c16")
    with pytest.raises(CircuitlabError, match="install a C compiler"):
        attention.backend()
    with pytest.raises(ValueError, match="c16"):
        with attention.forced("c16"):
            pass
    attention._chosen.cache_clear()
    rebuilt.setenv(attention.ENV, "fast")
    with pytest.raises(CircuitlabError, match="is not one of"):
        attention.backend()


@needs_kernel
def test_a_kernel_that_will_not_load_falls_back_to_torch(rebuilt):
    """A temporary folder mounted noexec, say: the built library does not load; auto takes torch's kernel."""
    def refuse(path):
        raise OSError(f"{path}: failed to map segment from shared object")
    rebuilt.setattr(attention.ctypes, "CDLL", refuse)
    rebuilt.setattr(attention, "_cpu_flags", lambda: ("AuthenticAMD", {"avx512f"}))
    rebuilt.delenv(attention.ENV, raising=False)
    assert attention.kernel() is None and "would not load" in attention.build_error()
    assert attention.backend() == "torch"


def test_auto_takes_the_kernel_only_on_the_cpus_it_was_measured_on(rebuilt):
    rebuilt.delenv(attention.ENV, raising=False)
    rebuilt.setattr(attention, "kernel", lambda: object())  # as if it built
    for vendor, flags, expected in (("AuthenticAMD", {"avx512f"}, "c16"), ("AuthenticAMD", {"avx2"}, "torch"),
                                    ("GenuineIntel", {"avx512f"}, "torch")):
        attention._chosen.cache_clear()
        rebuilt.setattr(attention, "_cpu_flags", lambda v=vendor, f=flags: (v, f))
        assert attention.backend() == expected


@needs_kernel
def test_a_run_resumes_with_the_attention_kernel_it_was_trained_with(tiny_data, tmp_path):
    """The kernel and torch's round differently: a language model's weights after 30 steps differ between them
    (checked first, so the test can fail). run.json records the kernel; a resume under the other one uses the
    recorded one and ends exactly where the uninterrupted run does; a run.json without the record (a run from before
    the kernel) resumes with torch's."""
    from circuitlab.training import LanguageModelTask, TrainConfig, train

    m = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, n_ctx=32, d_vocab=320)
    t = TrainConfig(batch_size=4, lr=1e-3, max_steps=30, warmup_steps=2, eval_every=10, checkpoint_every=10, seed=0)
    task = LanguageModelTask(tiny_data)
    weights = {}
    for name in ("c16", "torch"):
        with attention.forced(name):
            weights[name] = train(m, t, task, tmp_path / name, progress=False).model().state_dict()
        assert json.loads((tmp_path / name / "run.json").read_text())["attention"] == name
    assert not all(torch.equal(weights["c16"][k], weights["torch"][k]) for k in weights["torch"])
    for saved, other in (("c16", "torch"), ("torch", "c16"), (None, "c16")):
        out = tmp_path / f"resumed-{saved}"
        with attention.forced(saved or "torch"):
            train(m, t, task, out, progress=False, stop_at=10)
        if saved is None:
            meta = json.loads((out / "run.json").read_text())
            del meta["attention"]
            (out / "run.json").write_text(json.dumps(meta))
        with attention.forced(other):
            got = train(m, t, task, out, resume=True, progress=False).model().state_dict()
            assert attention.backend() == other
        assert all(torch.equal(got[k], weights[saved or "torch"][k]) for k in got)
        assert json.loads((out / "run.json").read_text())["attention"] == (saved or "torch")


def test_cli_refuses_an_unknown_attention_setting_in_one_line(rebuilt, tmp_path):
    from typer.testing import CliRunner

    from circuitlab.cli import app

    rebuilt.setenv(attention.ENV, "flash")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--preset", "attn1", "--out", str(out), "--max-steps", "1", "--quiet"])
    lines = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "CIRCUITLAB_ATTENTION='flash'" in lines[0], r.output
    assert "Traceback" not in r.output and not out.exists()

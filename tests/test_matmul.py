"""The fast paths' matrix products (`circuitlab.model.matmul`): oneDNN's linear against a float64 reference, the
same bits on any thread count, and the backend chosen by the rule the module states."""

from __future__ import annotations

import os

import pytest
import torch

from circuitlab.errors import CircuitlabError
from circuitlab.model import matmul

needs_onednn = pytest.mark.skipif(not matmul.onednn_available(), reason="this torch has no oneDNN linear for the CPU")


@pytest.fixture
def fresh_backend(monkeypatch):
    """`backend()` read again under the test's environment, and again after it."""
    matmul._chosen.cache_clear()
    yield monkeypatch
    matmul._chosen.cache_clear()


def _case(n: int, d_in: int, d_out: int, bias: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    W = torch.randn(d_in, d_out, generator=g) / d_in**0.5
    b = {"none": None, "vector": torch.randn(d_out, generator=g), "matrix": torch.randn(n, d_out, generator=g)}[bias]
    grad = torch.randn(n, d_out, generator=g)
    return x, W, b, grad


def _run(fn, x, W, b, grad):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, W, b)]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves if t is not None]


@needs_onednn
@pytest.mark.parametrize("bias", ["none", "vector", "matrix"])
@pytest.mark.parametrize("shape", [(383, 128, 512), (383, 512, 128), (64, 64, 64)])
def test_onednn_linear_matches_float64(shape, bias):
    """Output and the three gradients against float64 (both orders of the weight gradient: d_in <= d_out and >)."""
    x, W, b, grad = _case(*shape, bias)
    ours = _run(matmul._OneDNNLinear.apply, x, W, b, grad)
    ref = _run(lambda x, W, b: torch.addmm(b, x, W) if b is not None else x @ W,
               *(t.double() if t is not None else None for t in (x, W, b)), grad.double())
    assert len(ours) == len(ref)
    for a, r in zip(ours, ref):
        assert a.dtype == torch.float32 and a.shape == r.shape
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-4 * r.abs().max().item())


@needs_onednn
def test_onednn_linear_same_bits_on_one_and_two_threads():
    """`reproduce` switches the grokking run from 1 thread to all mid-run: oneDNN's products must not depend on it."""
    x, W, b, grad = _case(3830, 128, 512, "vector")
    saved = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_run(matmul._OneDNNLinear.apply, x, W, b, grad))
    finally:
        torch.set_num_threads(saved)
    for a, c in zip(*results):
        assert torch.equal(a, c)


@pytest.mark.parametrize("backend", ["onednn", "torch"])
def test_linear_relu_is_relu_of_linear_to_the_bit(backend):
    """`linear_relu` fuses the ReLU into oneDNN's product: its output and its three gradients are exactly those of
    `relu(linear(x, W, b))` (the grokking step's MLP, whose trajectory must not move), on 1 and 2 threads; a third
    of the pre-activations are negative, so the mask matters."""
    if backend == "onednn" and not matmul.onednn_available():
        pytest.skip("this torch has no oneDNN linear for the CPU")
    x, W, b, grad = _case(3830, 128, 512, "vector")
    b = b - 0.4  # more zeros after the ReLU
    saved = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with matmul.forced(backend):
                fused = _run(matmul.linear_relu, x, W, b, grad)
                plain = _run(lambda x, W, b: torch.relu(matmul.linear(x, W, b)), x, W, b, grad)
            assert 0.2 < float((fused[0] == 0).float().mean()) < 0.8
            for a, c in zip(fused, plain):
                assert torch.equal(a, c)
    finally:
        torch.set_num_threads(saved)
    x3 = x.view(10, 383, 128)  # any leading dimensions, as `linear`
    assert torch.equal(matmul.linear_relu(x3, W, b), torch.relu(matmul.linear(x, W, b)).view(10, 383, 512))


@pytest.mark.parametrize("backend", ["onednn", "torch"])
def test_linear_relu_of_bag_is_linear_relu_of_the_bag(backend):
    """`linear_relu_of_bag` multiplies the table's rows and bags the products (the grokking step's MLP input): its
    output and the gradients of everything upstream (the table and the bag's weights, through x; W and b) match
    `linear_relu` on x = bag(table) to float rounding and a float64 reference; the same bits on 1 and 2 threads."""
    if backend == "onednn" and not matmul.onednn_available():
        pytest.skip("this torch has no oneDNN linear for the CPU")
    g = torch.Generator().manual_seed(1)
    n, bag, rows_in_table, d_in, d_out = 600, 13, 150, 64, 96
    table0 = torch.randn(rows_in_table, d_in, generator=g)
    weights0 = torch.rand(n, bag, generator=g)
    rows = torch.randint(0, rows_in_table, (n, bag), generator=g)
    W0, b0 = torch.randn(d_in, d_out, generator=g) / d_in**0.5, torch.randn(d_out, generator=g) - 0.4
    grad = torch.randn(n, d_out, generator=g)

    def run(fused: bool, dtype=torch.float32):
        leaves = [t.to(dtype).clone().requires_grad_() for t in (table0, weights0, W0, b0)]
        table, weights, W, b = leaves
        x = torch.nn.functional.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
        out = matmul.linear_relu_of_bag(x, W, b, rows, weights, table) if fused else torch.relu(x @ W + b)
        out.backward(grad.to(dtype))
        return [out.detach()] + [t.grad for t in leaves]

    saved = torch.get_num_threads()
    try:
        per_threads = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with matmul.forced(backend):
                per_threads.append(run(True))
    finally:
        torch.set_num_threads(saved)
    ref = run(False, torch.float64)
    assert 0.2 < float((ref[0] == 0).double().mean()) < 0.8  # the ReLU's mask matters
    for a, c, r in zip(*per_threads, ref):
        assert torch.equal(a, c)
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())


def test_torch_backend_is_addmm_to_the_bit(fresh_backend):
    """CIRCUITLAB_MATMUL=torch: `linear` is exactly torch's own product, so nothing changes where oneDNN is off."""
    fresh_backend.setenv(matmul.ENV, "torch")
    assert matmul.backend() == "torch"
    x, W, b, grad = _case(200, 64, 96, "vector")
    assert torch.equal(matmul.linear(x, W, b), torch.addmm(b, x, W))
    assert torch.equal(matmul.linear(x, W), x @ W)
    x3 = x.view(8, 25, 64)
    assert torch.equal(matmul.linear(x3, W), x3 @ W)
    acc = torch.zeros(64, 96)
    assert torch.equal(matmul.add_mm_(acc.clone(), x.T, grad), acc.addmm_(x.T, grad))


def test_backend_rule(fresh_backend):
    """Unset: oneDNN on an AMD CPU with AVX-512 (where it is available), torch on Intel or without AVX-512."""
    fresh_backend.delenv(matmul.ENV, raising=False)
    cases = {("AuthenticAMD", "avx2 avx512f"): "onednn" if matmul.onednn_available() else "torch",
             ("AuthenticAMD", "avx2"): "torch", ("GenuineIntel", "avx2 avx512f"): "torch", ("", ""): "torch"}
    for (vendor, flags), expected in cases.items():
        fresh_backend.setattr(matmul, "_cpu_flags", lambda v=vendor, f=flags: (v, set(f.split())))
        matmul._chosen.cache_clear()
        assert matmul.backend() == expected, (vendor, flags)


def test_backend_rejects_an_unknown_choice(fresh_backend):
    fresh_backend.setenv(matmul.ENV, "blas")
    with pytest.raises(CircuitlabError, match="CIRCUITLAB_MATMUL='blas' is not one of"):
        matmul.backend()


@needs_onednn
def test_forced_onednn_is_used_for_float32_cpu_only(fresh_backend):
    fresh_backend.setenv(matmul.ENV, "onednn")
    calls = []
    real = matmul._dnn
    fresh_backend.setattr(matmul, "_dnn", lambda *a: calls.append(1) or real(*a))
    x, W, b, _ = _case(50, 32, 16, "vector")
    matmul.linear(x, W, b)
    assert calls, "float32 CPU input should take oneDNN"
    calls.clear()
    matmul.linear(x.double(), W.double(), b.double())
    assert not calls, "float64 takes torch's path"


def test_cpu_flags_reads_this_machine():
    vendor, flags = matmul._cpu_flags()
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if "vendor_id" in info and "flags" in info:
        assert vendor and vendor in info and flags and all(f in info for f in list(flags)[:5])
    else:
        assert (vendor, flags) == ("", set())


def test_cpu_name_reads_the_first_processor():
    two = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\n"
           "processor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: Other\n")
    assert matmul.cpu_name(two) == "AMD EPYC family 25 model 17"
    assert matmul.cpu_name("processor\t: 0\nfeatures\t: fp asimd\n") is None  # an ARM cpuinfo names no model
    here = matmul.cpu_name()
    assert here is None or here.split(" family ")[0] in matmul._cpuinfo()


def test_dense_copies_only_what_onednn_would_multiply_slowly():
    W = torch.randn(64, 192)
    assert matmul._dense(W) is W and matmul._dense(W.t()).data_ptr() == W.data_ptr()  # row-major or its transpose
    part = W[:, :128]  # a column slice (the fast path's positional Q/K product): copied, same values
    dense = matmul._dense(part.t())
    assert dense.is_contiguous() and dense.data_ptr() != W.data_ptr() and torch.equal(dense, part.t())


@needs_onednn
def test_onednn_linear_of_a_column_slice_is_right(fresh_backend):
    fresh_backend.setenv(matmul.ENV, "onednn")
    x, W = torch.randn(128, 64), torch.randn(64, 192)
    torch.testing.assert_close(matmul.linear(x, W[:, :128]), x @ W[:, :128], rtol=1e-5, atol=1e-4)


def test_cli_refuses_an_unknown_backend_in_one_line(fresh_backend, tmp_path):
    from typer.testing import CliRunner

    from circuitlab.cli import app

    fresh_backend.setenv(matmul.ENV, "fast")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--preset", "attn1", "--out", str(out), "--max-steps", "1", "--quiet"])
    lines = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "CIRCUITLAB_MATMUL='fast'" in lines[0], r.output
    assert "Traceback" not in r.output and not out.exists()

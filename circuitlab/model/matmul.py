"""Matrix products of the fast paths, through oneDNN on CPUs where torch's default BLAS leaves half the machine idle.

torch's x86 CPU wheels multiply float32 matrices with MKL, and MKL takes its AVX2 code on AMD processors even where
they have AVX-512; oneDNN, which the same wheel carries (torch's compiler uses it for linear layers on the CPU),
picks its kernels from the CPU's features. Session 13's 2-core AMD EPYC (AVX-512), float32, median of alternating
rounds (`benchmarks/matmul.py`):

    x [3830, 128] @ W [128, 512]   one thread: MKL  88 GFLOP/s, oneDNN 208   two threads: 159, 377

On session 14's AMD EPYC family 25 (Zen 4, whose AVX-512 units are AVX2's width) the same product read 68 and 91,
two threads 123 and 155, and oneDNN's weight gradients on two threads were 0.75-0.97x MKL's: little to gain there,
but the same kernels: every demo value the README quotes came out the same as on family 26.

`linear(x, W, b)` is x @ W + b (TransformerLens's layout: W is [d_in, d_out]), forward and backward (dL/dx = g W^T,
dL/dW = x^T g, dL/db = sum_rows g), each product through the backend that `backend()` chose once per process:

- `CIRCUITLAB_MATMUL=onednn` or `torch` chooses; unset (`auto`), oneDNN where it is measured faster: an x86-64 AMD
  CPU with AVX-512, torch built with MKL and oneDNN. Elsewhere torch's own `addmm` (Intel CPUs, where MKL uses
  AVX-512, in its strict CNR mode where circuitlab sets it: `circuitlab.mkl`; ARM; GPUs: a CUDA tensor always takes torch's path).

Both backends compute the same float32 products up to rounding (the order of the sums differs), so a model trained
with one and then the other does not follow the same trajectory to the bit; each one's results do not depend on the
thread count (tested). The hooked path keeps torch's einsums, as TransformerLens does.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch
from torch import Tensor

from circuitlab.mkl import cpu_flags as _cpu_flags, cpuinfo as _cpuinfo

ENV = "CIRCUITLAB_MATMUL"
CHOICES = ("auto", "onednn", "torch")


def cpu_name(cpuinfo: str | None = None) -> str | None:
    """The first CPU's model name with its family and model numbers, from /proc/cpuinfo (or the text given; None
    where there is none), for the benchmarks' records: one model name can cover processors whose matmul rates differ
    twofold (AMD EPYC family 25, Zen 4, whose AVX-512 runs at AVX2's width, and family 26, Zen 5, where oneDNN ran
    2x MKL)."""
    first = (_cpuinfo() if cpuinfo is None else cpuinfo).split("\n\n")[0]
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    if "model name" not in fields:
        return None
    return f"{fields['model name']} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


def onednn_available() -> bool:
    """Whether this torch can run oneDNN's float32 linear on dense CPU tensors."""
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


_forced: str | None = None


def backend() -> str:
    """'onednn' or 'torch': `forced`'s inside it, else from CIRCUITLAB_MATMUL (module docstring), read once."""
    return _forced if _forced is not None else _chosen()


@contextlib.contextmanager
def forced(name: str):
    """Inside the block, every product takes backend `name` ('onednn' or 'torch'): for side-by-side benchmarks."""
    global _forced
    if name not in ("onednn", "torch") or (name == "onednn" and not onednn_available()):
        raise ValueError(f"cannot force the matmul backend {name!r} here")
    saved, _forced = _forced, name
    try:
        yield
    finally:
        _forced = saved


@functools.cache
def _chosen() -> str:
    from circuitlab.errors import CircuitlabError

    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise CircuitlabError(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(CHOICES)}: unset it, or choose one")
    if choice == "onednn":
        if not onednn_available():
            raise CircuitlabError(f"{ENV}=onednn, but this torch has no oneDNN linear for the CPU: unset {ENV}")
        return "onednn"
    if choice == "torch" or not onednn_available():
        return "torch"
    vendor, flags = _cpu_flags()
    return "onednn" if vendor == "AuthenticAMD" and "avx512f" in flags and torch.backends.mkl.is_available() else "torch"


def _dense(t: Tensor) -> Tensor:
    """t itself if it is row-major or a transpose of one, else a row-major copy: oneDNN multiplies any other
    strides (a column slice of a wider matrix, say) with a reference kernel, ~100x slower (session 13: a
    [128, 64] slice of W_QKV took 25 ms against 0.2)."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _dnn(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight.T + bias by oneDNN (weight [d_out, d_in], as torch's linear takes it)."""
    return torch.ops.mkldnn._linear_pointwise(_dense(x), _dense(weight), bias, "none", [], "")


def _weight_grad(x: Tensor, g: Tensor) -> Tensor:
    """x^T g [d_in, d_out] for x [n, d_in], g [n, d_out] by oneDNN, with the narrower side as the product's rows:
    oneDNN's kernels for a long reduction (n) ran 10-40% faster so (`benchmarks/matmul.py`)."""
    if x.shape[1] <= g.shape[1]:
        return _dnn(x.t(), g.t(), None)
    return _dnn(g.t(), x.t(), None).t()


class _OneDNNLinear(torch.autograd.Function):
    """x @ W + b for 2-D x with every product by oneDNN; b a [d_out] bias (fused) or any tensor the product
    broadcasts with (added after, as addmm's `input`)."""

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, W)
        ctx.b_shape = None if b is None else b.shape
        if b is None or b.dim() == 1:
            return _dnn(x, W.t(), b)
        return _dnn(x, W.t(), None).add_(b)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, W = ctx.saved_tensors
        return _linear_grads(ctx, x, W, g)


def _linear_grads(ctx, x: Tensor, W: Tensor, g: Tensor):
    """(dL/dx, dL/dW, dL/db) of x @ W + b from g = dL/d(output), each where the autograd context needs it."""
    gx = _dnn(g, W, None) if ctx.needs_input_grad[0] else None  # g W^T
    gW = _weight_grad(x, g) if ctx.needs_input_grad[1] else None  # x^T g
    gb = g.sum_to_size(ctx.b_shape) if ctx.needs_input_grad[2] else None
    return gx, gW, gb


class _OneDNNLinearReLU(torch.autograd.Function):
    """relu(x @ W + b) for 2-D x and a [d_out] bias, the ReLU applied by oneDNN as the product's output is written
    (no pre-activation tensor: one pass over [n, d_out] less each way). Backward as autograd's ReLU and
    `_OneDNNLinear` compute it: the gradient masked where the output is 0 (`threshold_backward`), then the three
    products' gradients, so the numbers are the same to the bit."""

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor) -> Tensor:
        out = torch.ops.mkldnn._linear_pointwise(_dense(x), _dense(W.t()), b, "relu", [], "")
        ctx.save_for_backward(x, W, out)
        ctx.b_shape, ctx.onednn = b.shape, True
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        return _relu_linear_grads(ctx, g)


def _relu_linear_grads(ctx, g: Tensor):
    """(dL/dx, dL/dW, dL/db) of out = relu(x @ W + b), with (x, W, out) saved, as autograd's ReLU and linear compute
    them: g masked where the output is 0, then the three products' gradients, by oneDNN where `ctx.onednn`."""
    x, W, out = ctx.saved_tensors
    g = torch.ops.aten.threshold_backward(g, out, 0)
    if ctx.onednn:
        return _linear_grads(ctx, x, W, g)
    gx = g @ W.t() if ctx.needs_input_grad[0] else None
    gW = x.t() @ g if ctx.needs_input_grad[1] else None
    gb = g.sum_to_size(ctx.b_shape) if ctx.needs_input_grad[2] else None
    return gx, gW, gb


def _onednn(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and backend() == "onednn"


def linear(x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
    """x @ W + b: x [..., d_in], W [d_in, d_out]; b None, a [d_out] bias, or (2-D x) any tensor addmm takes as its
    `input`. Differentiable in all three. On torch's backend exactly `torch.addmm(b, x, W)` or `x @ W`."""
    if not _onednn(x) or W.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        if b is None:
            return x @ W
        if x.dim() == 2:
            return torch.addmm(b, x, W)
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[1])
    if x.dim() != 2 and b is not None and b.dim() != 1:
        raise ValueError("linear: a bias other than [d_out] needs 2-D x")
    out = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), W, b)
    return out.view(*x.shape[:-1], W.shape[1])


def linear_relu(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """relu(x @ W + b) with b a [d_out] bias, as `F.relu(linear(x, W, b))` computes it to the bit; on oneDNN's
    backend the ReLU is fused into the product (`_OneDNNLinearReLU`)."""
    if not _onednn(x) or W.dtype != x.dtype or b.dtype != x.dtype or b.dim() != 1:
        return torch.relu(linear(x, W, b))
    return _OneDNNLinearReLU.apply(x.reshape(-1, x.shape[-1]), W, b).view(*x.shape[:-1], W.shape[1])


class _LinearReLUOfBag(torch.autograd.Function):
    """relu(x @ W + b) for x = bag(rows, table, weights) (`linear_relu_of_bag`): the forward bags the rows of
    table @ W, the backward is `linear_relu`'s in (x, W, b), so x carries the gradient to the table and weights."""

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor, rows: Tensor, weights: Tensor, table: Tensor) -> Tensor:
        out = torch.nn.functional.embedding_bag(rows, mm(table, W), per_sample_weights=weights, mode="sum")
        out = out.add_(b).relu_()
        ctx.save_for_backward(x, W, out)
        ctx.b_shape, ctx.onednn = b.shape, _onednn(x) and W.dtype == x.dtype
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        return (*_relu_linear_grads(ctx, g), None, None, None)


def linear_relu_of_bag(x: Tensor, W: Tensor, b: Tensor, rows: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """relu(x @ W + b) where x [n, d_in] is a weighted bag of a table's rows, x[i] = sum_j weights[i, j] *
    table[rows[i, j]] (`F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")`, which the caller has
    computed and differentiates through). The product is linear, so x @ W = bag(rows, table @ W, weights): the
    forward multiplies the table's rows (fewer than x's when the table is small) and bags the products, instead of
    multiplying x; the backward is `linear_relu`'s, g masked by the ReLU, then g W^T, x^T g and sum_rows g. Equal to
    `linear_relu(x, W, b)` up to float rounding (the order of the sums differs); `table` and `weights` get their
    gradients through x, not from here."""
    return _LinearReLUOfBag.apply(x, W, b, rows, weights.detach(), table.detach())


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for 2-D tensors outside autograd (inside a custom autograd function, say), by the chosen backend."""
    return _dnn(a, b.t(), None) if _onednn(a) and b.dtype == a.dtype else a @ b


def mm_into(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """out = a @ b (torch: `torch.mm(a, b, out=out)`), outside autograd."""
    if _onednn(a) and b.dtype == a.dtype:
        return out.copy_(_dnn(a, b.t(), None))
    return torch.mm(a, b, out=out)


def add_mm_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """acc += a @ b in place (torch: `acc.addmm_(a, b)`), outside autograd."""
    if _onednn(a) and b.dtype == a.dtype:
        return acc.add_(_dnn(a, b.t(), None))
    return acc.addmm_(a, b)

"""Causal attention of the fast path: a C kernel of our own for heads of 16 dimensions on the CPU, else torch's.

The fast path's attention is softmax(q k^T / sqrt(d_head) + causal mask) v per (batch, head) (Vaswani et al. 2017;
the attention pattern A of Elhage et al. 2021). torch's `scaled_dot_product_attention` computes it on the CPU with a
flash kernel that runs at 17-35 GFLOP/s on one thread at the induction preset's shapes (batch 8 x 4 heads x 128
positions x 16), against ~100 for the products around it: 35% of the induction stage's step (docs/performance.md,
session 21). `attention16.c`, next to this file, computes the same function for d_head = 16, forward and backward:
scores 16 keys at a time from a transposed K, the output and the gradients as 16-wide vectors (GCC vector
extensions), the backward recomputing the pattern from the forward's log-sum-exp per query, the (batch, head) pairs
shared out over torch's own OpenMP threads (it links the libgomp torch loads). Each pair is computed whole by one
thread, so its bits do not depend on the thread count; they differ from torch's kernel's in the last places (it
sums in another order: outputs within ~1e-6, gradients ~2e-6).

`causal_attention(q, k, v)` takes [batch, pos, head, d_head] views (the fused QKV product's, any strides with the
last dimension contiguous) and returns [batch, pos, head, d_head]. The kernel (`backend()` 'c16') takes float32 CPU
tensors with d_head 16 and at most 512 positions; anything else, and the 'torch' backend, goes to
`scaled_dot_product_attention`. The backend is chosen once per process:

- `CIRCUITLAB_ATTENTION=c16` or `torch` chooses; unset (`auto`), 'c16' where it was measured faster: an x86-64 AMD
  CPU with AVX-512 (as `matmul`'s oneDNN rule; sessions 21 and 23, Zen 4: one layer 1.42-1.45x torch's kernel on one
  thread and 1.69-1.86x on two, `benchmarks/attention_kernel.py`) where the system's C compiler builds the kernel;
  elsewhere torch's (not measured there).
- The kernel is compiled at first use in each process (`cc -O3 -march=native -ffast-math -fopenmp`, ~0.6 s), into a
  temporary folder removed once loaded. Without a compiler, or where the built kernel will not load, `auto` takes
  torch's kernel (said once in the log); a forced 'c16' is an error.

Training records the backend in run.json and a resumed run keeps it (`training.loop`), as it does the matmul
backend: the two round differently, so a run trained with one does not continue its trajectory with the other.
The hooked path keeps explicit scores and patterns through its hook points, as TransformerLens does.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab.mkl import cpu_flags as _cpu_flags

log = logging.getLogger(__name__)

ENV = "CIRCUITLAB_ATTENTION"
CHOICES = ("auto", "c16", "torch")
SOURCE = Path(__file__).with_name("attention16.c")
D_HEAD = 16
MAX_POS = 512  # the kernel's per-pair buffers (TMAX in attention16.c)

_forced: str | None = None


def backend() -> str:
    """'c16' or 'torch': `forced`'s inside it, else from CIRCUITLAB_ATTENTION (module docstring), read once."""
    return _forced if _forced is not None else _chosen()


@contextlib.contextmanager
def forced(name: str):
    """Inside the block the fast path's attention takes backend `name` ('c16' or 'torch'): for benchmarks, tests and
    resuming a run with the backend it was trained with. 'c16' where the kernel does not build is a ValueError."""
    global _forced
    if name not in ("c16", "torch") or (name == "c16" and kernel() is None):
        raise ValueError(f"cannot force the attention backend {name!r} here ({build_error() or 'not a backend'})")
    saved, _forced = _forced, name
    try:
        yield
    finally:
        _forced = saved


def available() -> bool:
    """Whether the C kernel builds and loads here (compiling it, once per process, if not done yet)."""
    return kernel() is not None


def choice() -> str:
    """CIRCUITLAB_ATTENTION's value ('auto' where unset), checked without building anything: the command line reads
    it first, so a bad value is one line before any work."""
    from circuitlab.errors import CircuitlabError

    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise CircuitlabError(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(CHOICES)}: unset it, or choose one")
    return choice


@functools.cache
def _chosen() -> str:
    from circuitlab.errors import CircuitlabError

    choice_ = choice()
    if choice_ == "torch":
        return "torch"
    if choice_ == "auto":
        vendor, flags = _cpu_flags()
        if not (platform.machine().lower() in ("x86_64", "amd64") and vendor == "AuthenticAMD" and "avx512f" in flags):
            return "torch"
    if kernel() is None:
        if choice_ == "c16":
            raise CircuitlabError(f"{ENV}=c16, but the attention kernel does not build here ({build_error()}): "
                                  f"install a C compiler (GCC), or unset {ENV}")
        log.info("torch's attention kernel: circuitlab's own could not be built (%s)", build_error())
        return "torch"
    return "c16"


_build_error: list[str] = []


def build_error() -> str | None:
    """Why the kernel did not build (after `kernel()` returned None), else None."""
    return _build_error[0] if _build_error else None


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """attention16.c compiled and loaded (once per process), or None where it cannot be (`build_error()` says why)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    torch_lib = Path(torch.__file__).parent / "lib"
    gomp = torch_lib / "libgomp.so.1"
    if platform.system() != "Linux" or cc is None or not gomp.exists():
        _build_error.append("no C compiler on PATH" if cc is None else
                            "it needs Linux and the libgomp.so.1 of torch's CPU wheel")
        return None
    try:
        folder = Path(tempfile.mkdtemp(prefix="circuitlab-attention16-"))
    except OSError as e:
        _build_error.append(f"no temporary folder to build it in: {e}")
        return None
    try:
        out = folder / "attention16.so"
        # -nostdlib: no start files, so -ffast-math's crtfastmath.o (which would set flush-to-zero for the whole
        # process) is not linked; libgomp is torch's own, so the kernel shares torch's OpenMP threads and count.
        cmd = [cc, "-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared", "-o", str(out), str(SOURCE),
               "-lm", "-nostdlib", f"-L{torch_lib}", "-l:libgomp.so.1", f"-Wl,-rpath,{torch_lib}", "-lc"]
        try:
            built = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            _build_error.append(f"{cc} failed: {e}")
            return None
        if built.returncode != 0:
            _build_error.append(f"{cc}: " + (built.stderr.strip().splitlines() or ["no message"])[0])
            return None
        try:
            lib = ctypes.CDLL(str(out))
        except OSError as e:  # a temporary folder mounted noexec, say
            _build_error.append(f"the built kernel would not load: {e}")
            return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # loaded (or failed): the file is no longer needed
    P, I, L, Fl = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_float
    lib.attn16_fwd.argtypes = [P] * 5 + [I] * 3 + [L] * 12 + [Fl, I, I]
    lib.attn16_fwd.restype = None
    lib.attn16_bwd.argtypes = [P] * 9 + [I] * 3 + [L] * 24 + [Fl, I, I]
    lib.attn16_bwd.restype = None
    return lib


def _strides(x: Tensor) -> tuple[int, int, int]:
    """(batch, position, head) strides of a [B, T, H, 16] tensor whose last dimension is contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


def _last_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _Attention16(torch.autograd.Function):
    """Causal softmax(q k^T / 4) v for [B, T, H, 16] float32 CPU q, k, v by attention16.c."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        lib = kernel()
        q, k, v = (_last_contiguous(t) for t in (q, k, v))
        B, T, H, E = q.shape
        o, lse = q.new_empty(B, T, H, E), q.new_empty(B, H, T)
        lib.attn16_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), B, H, T,
                       *_strides(q), *_strides(k), *_strides(v), *_strides(o), 1 / math.sqrt(E), 0, B * H)
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, g: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        B, T, H, E = q.shape
        g = _last_contiguous(g)
        d = q.new_empty(3, B, T, H, E)
        kernel().attn16_bwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), g.data_ptr(), lse.data_ptr(),
                            d[0].data_ptr(), d[1].data_ptr(), d[2].data_ptr(), B, H, T, *_strides(q), *_strides(k),
                            *_strides(v), *_strides(o), *_strides(g), *_strides(d[0]), *_strides(d[1]),
                            *_strides(d[2]), 1 / math.sqrt(E), 0, B * H)
        return d[0], d[1], d[2]


def takes(q: Tensor) -> bool:
    """Whether `causal_attention` runs the C kernel on q (and k, v like it) under the current backend."""
    return (q.device.type == "cpu" and q.dtype == torch.float32 and q.shape[-1] == D_HEAD
            and 0 < q.shape[1] <= MAX_POS and backend() == "c16")


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d_head), causal) v for [batch, pos, head, d_head] q, k, v; [batch, pos, head, d_head]."""
    if takes(q) and k.dtype == v.dtype == q.dtype and k.device == v.device == q.device:
        return _Attention16.apply(q, k, v)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True).transpose(1, 2)

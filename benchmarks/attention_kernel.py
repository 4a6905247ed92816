"""A causal-attention kernel for heads of 16 (benchmarks/attention16.c) against torch's flash kernel, on the CPU.

A prototype, not used by circuitlab: torch's `scaled_dot_product_attention` takes ~35% of the induction stage's
step on one thread (README, "Performance", session 21), so this measures what a kernel of our own would buy. It
compiles attention16.c with the system's C compiler (`cc -O3 -march=native -ffast-math`) into a temporary folder,
calls it through ctypes on the same strided q, k, v views the fast path passes to torch, and reports:

- how far its output and gradients are from torch's (it sums in another order, so not the same bits);
- one layer's forward and backward at the induction preset's shapes (batch 8 x 4 heads x 128 x 16), alternating
  with torch's kernel, one thread;
- the induction stage's 2L training step (the quick preset, one thread, as its worker runs it) with either kernel,
  alternating, and how far the two copies' weights are apart after the rounds.

Only one thread: the kernel splits no work over threads, and Python threads beside torch's own spinning worker
threads lost time. Writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/attention_kernel.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from circuitlab.model import matmul

HERE = Path(__file__).parent


def build() -> ctypes.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("attention_kernel: no C compiler (cc or gcc) on PATH: install one to build benchmarks/attention16.c",
              file=sys.stderr)
        sys.exit(2)
    out = Path(tempfile.mkdtemp()) / "attention16.so"
    built = subprocess.run([cc, "-O3", "-march=native", "-ffast-math", "-fPIC", "-shared", "-o", str(out),
                            str(HERE / "attention16.c"), "-lm"], capture_output=True, text=True)
    if built.returncode != 0:
        first = (built.stderr.strip().splitlines() or ["no message"])[0]
        print(f"attention_kernel: {cc} could not build benchmarks/attention16.c ({first}): it needs GCC's vector "
              "extensions and -march=native (GCC or Clang on x86-64)", file=sys.stderr)
        sys.exit(2)
    lib = ctypes.CDLL(str(out))
    P, I, L, Fl = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_float
    lib.attn16_fwd.argtypes = [P] * 5 + [I] * 3 + [L] * 12 + [Fl, I, I]
    lib.attn16_bwd.argtypes = [P] * 9 + [I] * 3 + [L] * 24 + [Fl, I, I]
    return lib


def strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, position, head) strides of a [B, T, H, 16] view whose last dimension is contiguous."""
    assert x.stride(-1) == 1 and x.shape[-1] == 16
    return x.stride(0), x.stride(1), x.stride(2)


def attention_function(lib):
    class Attention16(torch.autograd.Function):
        """Causal softmax(q k^T / 4) v for [B, T, H, 16] q, k, v."""

        @staticmethod
        def forward(ctx, q, k, v):
            B, T, H, E = q.shape
            o, lse = torch.empty(B, T, H, E), torch.empty(B, H, T)
            lib.attn16_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), B, H, T,
                           *strides(q), *strides(k), *strides(v), *strides(o), 1 / math.sqrt(E), 0, B * H)
            ctx.save_for_backward(q, k, v, o, lse)
            return o

        @staticmethod
        def backward(ctx, g):
            q, k, v, o, lse = ctx.saved_tensors
            B, T, H, E = q.shape
            g = g if g.stride(-1) == 1 else g.contiguous()
            d = torch.empty(3, B, T, H, E)
            lib.attn16_bwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), g.data_ptr(), lse.data_ptr(),
                           d[0].data_ptr(), d[1].data_ptr(), d[2].data_ptr(), B, H, T, *strides(q), *strides(k),
                           *strides(v), *strides(o), *strides(g), *strides(d[0]), *strides(d[1]), *strides(d[2]),
                           1 / math.sqrt(E), 0, B * H)
            return d[0], d[1], d[2]

    def sdpa(q, k, v, is_causal=True):  # the fast path's call: [B, H, T, E] transposed views
        assert is_causal
        return Attention16.apply(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    return sdpa


def alternate(contenders: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    rates = {name: [] for name in contenders}
    for f in contenders.values():
        f()
    for _ in range(rounds):
        for name, f in contenders.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                f()
            rates[name].append(steps / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default="benchmarks/results/attention_kernel.json")
    args = ap.parse_args()
    ours = attention_function(build())
    torch.set_num_threads(1)
    torch.manual_seed(0)
    B, H, T, E = 8, 4, 128, 16
    qkv = torch.randn(B, T, 3 * H * E, requires_grad=True)
    g = torch.randn(B, H, T, E)

    def layer(fn):
        def run():
            q, k, v = qkv.view(B, T, 3, H, E).unbind(2)
            fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).backward(g)
            qkv.grad = None
        return run

    outs = {}
    for name, fn in (("torch", F.scaled_dot_product_attention), ("ours", ours)):
        q, k, v = qkv.view(B, T, 3, H, E).unbind(2)
        o = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        o.backward(g)
        outs[name] = (o.detach(), qkv.grad.clone())
        qkv.grad = None
    out_diff = float((outs["torch"][0] - outs["ours"][0]).abs().max())
    grad_diff = float((outs["torch"][1] - outs["ours"][1]).abs().max())
    print(f"largest difference from torch's kernel: output {out_diff:.1e}, gradient {grad_diff:.1e} "
          f"(gradients up to {float(outs['torch'][1].abs().max()):.1f})")

    rates = alternate({"torch_flash": layer(F.scaled_dot_product_attention), "ours": layer(ours)}, args.rounds, 50)
    ms = {k: 1000 / statistics.median(v) for k, v in rates.items()}
    print(f"one layer forward + backward, batch {B} x {H} heads x {T} x {E}, one thread: torch {ms['torch_flash']:.2f}"
          f" ms, ours {ms['ours']:.2f} ms: {ms['torch_flash'] / ms['ours']:.2f}x")

    sys.path.insert(0, str(HERE))
    import circuitlab.model.model as model_module
    from deterministic_fill import induction_contenders

    torch.use_deterministic_algorithms(True, warn_only=True)
    make = induction_contenders()
    nets = {"torch_flash": make(), "ours": make()}

    original = F.scaled_dot_product_attention  # model.py calls it as F.scaled_dot_product_attention

    def step(name):
        def run():
            model_module.F.scaled_dot_product_attention = original if name == "torch_flash" else ours
            try:
                nets[name][1]()
            finally:
                model_module.F.scaled_dot_product_attention = original
        return run

    step_rates = alternate({name: step(name) for name in nets}, args.rounds, 40)
    assert model_module.F.scaled_dot_product_attention is original
    sps = {k: statistics.median(v) for k, v in step_rates.items()}
    apart = max(float((p - q).detach().abs().max()) for p, q in zip(nets["torch_flash"][0].parameters(),
                                                             nets["ours"][0].parameters()))
    print(f"induction 2L step, one thread: torch {sps['torch_flash']:.2f} steps/s, ours {sps['ours']:.2f}: "
          f"{sps['ours'] / sps['torch_flash']:.3f}x; weights apart by up to {apart:.1e} after the rounds")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "what": __doc__.splitlines()[0], "machine": platform.processor() or platform.machine(),
        "cpu": matmul.cpu_name(), "torch": torch.__version__, "rounds": args.rounds,
        "max_abs_diff": {"output": out_diff, "gradient": grad_diff},
        "layer_ms": ms, "layer_speedup": ms["torch_flash"] / ms["ours"],
        "layer_rounds_per_s": rates, "step_per_s": sps, "step_speedup": sps["ours"] / sps["torch_flash"],
        "step_rounds": step_rates, "weights_apart": apart}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

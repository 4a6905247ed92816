"""A causal-attention kernel for heads of 16 (benchmarks/attention16.c) against torch's flash kernel, on the CPU.

A prototype, not used by circuitlab: torch's `scaled_dot_product_attention` takes ~35% of the induction stage's
step on one thread (README, "Performance", session 21), so this measures what a kernel of our own would buy. It
compiles attention16.c with the system's C compiler (`cc -O3 -march=native -ffast-math -fopenmp`, linked to torch's
own libgomp) into a temporary folder, calls it through ctypes on the same strided q, k, v views the fast path passes
to torch, and reports:

- how far its output and gradients are from torch's (it sums in another order, so not the same bits);
- one layer's forward and backward at the induction preset's shapes (batch 8 x 4 heads x 128 x 16), alternating
  with torch's kernel;
- the induction stage's 2L training step (the quick preset; its worker runs it on one thread) with either kernel,
  alternating, and how far the two copies' weights are apart after the rounds;
- each on 1 and on 2 threads (the kernel shares its (batch, head) pairs out over torch's own OpenMP threads), and
  whether our kernel gives the same bits on both counts. Writes JSON to benchmarks/results/.

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
    torch_lib = Path(torch.__file__).parent / "lib"  # torch's own libgomp: one OpenMP runtime and thread pool
    built = subprocess.run([cc, "-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared", "-o", str(out),
                            str(HERE / "attention16.c"), "-lm", "-nostdlib", f"-L{torch_lib}", "-l:libgomp.so.1",
                            f"-Wl,-rpath,{torch_lib}", "-lc"], capture_output=True, text=True)
    if built.returncode != 0:
        first = (built.stderr.strip().splitlines() or ["no message"])[0]
        print(f"attention_kernel: {cc} could not build benchmarks/attention16.c ({first}): it needs GCC's vector "
              "extensions, -march=native and torch's libgomp (GCC on x86-64 Linux)", file=sys.stderr)
        sys.exit(2)
    lib = ctypes.CDLL(str(out))
    shutil.rmtree(out.parent)  # loaded: the file is no longer needed
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
            if E != 16 or T > 512 or q.dtype != torch.float32 or q.device.type != "cpu":
                raise ValueError("attention16 takes float32 CPU heads of 16 and at most 512 positions")
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
    sys.path.insert(0, str(HERE))
    import circuitlab.model.model as model_module
    from deterministic_fill import induction_contenders

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

    def outputs(fn):
        q, k, v = qkv.view(B, T, 3, H, E).unbind(2)
        o = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        o.backward(g)
        got = o.detach(), qkv.grad.clone()
        qkv.grad = None
        return got

    original = F.scaled_dot_product_attention  # model.py calls it as F.scaled_dot_product_attention

    def step(nets, name):
        def run():
            model_module.F.scaled_dot_product_attention = original if name == "torch_flash" else ours
            try:
                nets[name][1]()
            finally:
                model_module.F.scaled_dot_product_attention = original
        return run

    torch.use_deterministic_algorithms(True, warn_only=True)
    make = induction_contenders()
    result = {"what": __doc__.splitlines()[0], "machine": platform.processor() or platform.machine(),
              "cpu": matmul.cpu_name(), "torch": torch.__version__, "rounds": args.rounds, "threads": {}}
    ours_by_threads = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        theirs, mine = outputs(original), outputs(ours)
        ours_by_threads[threads] = mine
        out_diff = float((theirs[0] - mine[0]).abs().max())
        grad_diff = float((theirs[1] - mine[1]).abs().max())
        rates = alternate({"torch_flash": layer(original), "ours": layer(ours)}, args.rounds, 50)
        ms = {k: 1000 / statistics.median(v) for k, v in rates.items()}
        nets = {"torch_flash": make(), "ours": make()}
        step_rates = alternate({name: step(nets, name) for name in nets}, args.rounds, 40)
        assert model_module.F.scaled_dot_product_attention is original
        sps = {k: statistics.median(v) for k, v in step_rates.items()}
        apart = max(float((p - q).detach().abs().max()) for p, q in zip(nets["torch_flash"][0].parameters(),
                                                                         nets["ours"][0].parameters()))
        print(f"{threads} thread(s): largest difference from torch's kernel: output {out_diff:.1e}, gradient "
              f"{grad_diff:.1e} (gradients up to {float(theirs[1].abs().max()):.1f})")
        print(f"  one layer forward + backward, batch {B} x {H} heads x {T} x {E}: torch {ms['torch_flash']:.2f} ms, "
              f"ours {ms['ours']:.2f} ms: {ms['torch_flash'] / ms['ours']:.2f}x")
        print(f"  induction 2L step: torch {sps['torch_flash']:.2f} steps/s, ours {sps['ours']:.2f}: "
              f"{sps['ours'] / sps['torch_flash']:.3f}x; weights apart by up to {apart:.1e} after the rounds")
        result["threads"][threads] = {
            "max_abs_diff": {"output": out_diff, "gradient": grad_diff}, "layer_ms": ms,
            "layer_speedup": ms["torch_flash"] / ms["ours"], "layer_rounds_per_s": rates, "step_per_s": sps,
            "step_speedup": sps["ours"] / sps["torch_flash"], "step_rounds": step_rates, "weights_apart": apart}
    same = all(torch.equal(a, b) for a, b in zip(ours_by_threads[1], ours_by_threads[2]))
    result["ours_same_bits_on_1_and_2_threads"] = same
    print(f"our kernel's output and gradients the same to the bit on 1 and 2 threads: {same}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

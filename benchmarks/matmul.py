"""Matrix products: torch's default (`a @ b`: MKL in the x86 wheels) vs oneDNN (`circuitlab.model.matmul`), on the
shapes the fast paths multiply, forward and both backward products, on one thread and on every thread.

Both products are timed in alternating rounds in one process. Writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/matmul.py [--rounds 3] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from circuitlab.model import matmul
from circuitlab.training.allocator import keep_freed_memory

# (name, rows, d_in, d_out): the grokking step's MLP and unembedding (full batch of 3830), the attn2 LM step's QKV
# projection and unembedding chunk (batch 8 x 128 tokens), and the square matmul MFU's peak is read from.
SHAPES = [("grokking W_in", 3830, 128, 512), ("grokking W_out", 3830, 512, 128), ("grokking W_U", 3830, 128, 114),
          ("LM W_QKV", 1024, 128, 384), ("LM W_U chunk", 128, 128, 2048), ("square 1024", 1024, 1024, 1024)]


def rate(fn, flops: float, seconds: float) -> float:
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return flops * n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one timed round")
    ap.add_argument("--out", default="benchmarks/results/matmul.json")
    args = ap.parse_args()
    if not matmul.onednn_available():
        raise SystemExit("this torch has no oneDNN linear for the CPU: nothing to compare")
    keep_freed_memory()
    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    result = {"machine": platform.processor() or platform.machine(), "cpu_vendor": matmul._cpu_flags()[0],
              "cpu": matmul.cpu_name(), "backend_chosen": matmul.backend(), "threads": threads, "shapes": {}}
    print(f"backend chosen here: {result['backend_chosen']}; GFLOP/s, median of {args.rounds} alternating rounds")
    print(f"{'shape':16s} {'product':8s} {'threads':>7s} {'torch':>7s} {'oneDNN':>7s} {'ratio':>6s}")
    for name, n, d_in, d_out in SHAPES:
        x, W = torch.randn(n, d_in, generator=g), torch.randn(d_in, d_out, generator=g)
        gr = torch.randn(n, d_out, generator=g)
        products = {"forward": (lambda: x @ W, lambda: matmul._dnn(x, W.t(), None)),
                    "grad x": (lambda: gr @ W.t(), lambda: matmul._dnn(gr, W, None)),
                    "grad W": (lambda: x.t() @ gr, lambda: matmul._weight_grad(x, gr))}
        if name.startswith("square"):
            products = {"forward": products["forward"]}
        flops = 2.0 * n * d_in * d_out
        rows = {}
        for product, (plain, dnn) in products.items():
            torch.testing.assert_close(dnn(), plain(), rtol=1e-4, atol=1e-3)
            for t in sorted({1, threads}):
                torch.set_num_threads(t)
                rounds = {"torch": [], "onednn": []}
                for _ in range(args.rounds):
                    rounds["torch"].append(rate(plain, flops, args.seconds))
                    rounds["onednn"].append(rate(dnn, flops, args.seconds))
                med = {k: statistics.median(v) for k, v in rounds.items()}
                rows[f"{product}, {t} thread{'s' if t > 1 else ''}"] = {
                    "torch_gflops": med["torch"] / 1e9, "onednn_gflops": med["onednn"] / 1e9,
                    "ratio": med["onednn"] / med["torch"], "rounds": rounds}
                print(f"{name:16s} {product:8s} {t:7d} {med['torch'] / 1e9:7.0f} {med['onednn'] / 1e9:7.0f} "
                      f"{med['onednn'] / med['torch']:5.2f}x")
            torch.set_num_threads(threads)
        result["shapes"][f"{name} [{n}x{d_in}] @ [{d_in}x{d_out}]"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

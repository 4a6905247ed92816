"""circuitlab's causal-attention kernel for heads of 16 (`circuitlab.model.attention`) against torch's flash kernel.

torch's `scaled_dot_product_attention` took ~35% of the induction stage's step on one thread (docs/performance.md,
session 21); `circuitlab/model/attention16.c`, compiled at run time by `circuitlab.model.attention`, replaces it on
the fast path where `auto` chooses it (session 23). This times the two, whatever the backend `auto` chose here, on
the same strided q, k, v views the fast path passes, and reports:

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
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from circuitlab.model import attention, matmul

HERE = Path(__file__).parent


def attention_function():
    """Our kernel in the shape of torch's call, [B, H, T, E] transposed views, as `F.scaled_dot_product_attention`."""
    def sdpa(q, k, v, is_causal=True):
        assert is_causal
        with attention.forced("c16"):
            return attention.causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
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
    if not attention.available():
        print(f"attention_kernel: circuitlab's attention kernel does not build here ({attention.build_error()})",
              file=sys.stderr)
        sys.exit(2)
    ours = attention_function()
    sys.path.insert(0, str(HERE))
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

    original = F.scaled_dot_product_attention

    def step(nets, name):  # the fast path's own call (`attention.causal_attention`) with either kernel
        def run():
            with attention.forced("torch" if name == "torch_flash" else "c16"):
                nets[name][1]()
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

"""Copying statistic: low-rank eigenvalues (d_head x d_head) vs a dense vocab x vocab eigendecomposition.

Elhage et al. 2021: the non-zero eigenvalues of W_E W_V W_O W_U equal those of W_O W_U W_E W_V (cycle the product),
so sum(lambda) / sum(|lambda|) needs a d_head x d_head eigendecomposition per head instead of a d_vocab x d_vocab
one. This times both on every head of a model (a trained run, or random weights of a preset's shape), checks they
agree, and times the whole `analyze_model` on the run if one is given. Writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/copying_eigen.py [--run runs/RUN | --preset attn2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from circuitlab.circuits import copying_statistic, ov_circuit, qk_circuit
from circuitlab.model import ModelConfig, Transformer
from circuitlab.training import get_preset


def dense_copying(fm, n_heads: int) -> torch.Tensor:
    """The first n_heads heads (flattened over layers), each as a materialised [d_vocab, d_vocab] matrix."""
    A = fm.A.flatten(0, 1)[:n_heads]
    B = fm.B.flatten(0, 1)[:n_heads]
    lam = torch.linalg.eigvals(A @ B)
    return lam.sum(-1).real / lam.abs().sum(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run directory (default: random weights of --preset)")
    ap.add_argument("--preset", default="attn2")
    ap.add_argument("--dense-heads", type=int, default=4, help="heads to decompose densely (each takes seconds)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    run = None
    if args.run:
        import circuitlab

        run = circuitlab.load_run(args.run)
        model = run.model()
    else:
        model = Transformer(ModelConfig(**get_preset(args.preset).model))
    cfg = model.cfg
    result = {"model": args.run or args.preset, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
              "d_vocab": cfg.d_vocab, "d_head": cfg.d_head, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads()}
    for name, circuit in (("ov", ov_circuit(model)), ("qk", qk_circuit(model))):
        n_all = cfg.n_layers * cfg.n_heads
        k = min(args.dense_heads, n_all)
        t0 = time.perf_counter()
        low = copying_statistic(circuit).flatten()
        t_low = (time.perf_counter() - t0) / n_all
        t0 = time.perf_counter()
        dense = dense_copying(circuit, k)
        t_dense = (time.perf_counter() - t0) / k
        result[name] = {"low_rank_s_per_head": t_low, "dense_s_per_head": t_dense, "speedup": t_dense / t_low,
                        "dense_heads": k, "max_abs_difference": float((low[:k] - dense).abs().max())}
        print(f"{name.upper()} copying statistic per head, vocab {cfg.d_vocab}, d_head {cfg.d_head}: low-rank "
              f"{t_low * 1e3:.2f} ms, dense {t_dense:.2f} s -> {t_dense / t_low:,.0f}x faster "
              f"(dense on {k} of {n_all} heads; max |difference| {result[name]['max_abs_difference']:.1e})")
    if run is not None:
        from circuitlab.experiments.framework import analyze_model

        data = run.tokens()
        t0 = time.perf_counter()
        analysis = analyze_model(model, data.train, data.val, decode=lambda t: data.tokenizer.decode([t]))
        result["analyze_model_s"] = time.perf_counter() - t0
        result["analyze_model_parts_s"] = analysis.seconds
        print(f"whole analyze_model on {args.run}: {result['analyze_model_s']:.1f} s")
    out = Path(args.out or f"benchmarks/results/copying_eigen-{Path(args.run).name if args.run else args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

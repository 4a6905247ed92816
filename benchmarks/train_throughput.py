"""Training throughput: circuitlab's fused fast path vs the same model as TransformerLens's native model.

A third contender is circuitlab's fast path with torch's own matrix products (`CIRCUITLAB_MATMUL=torch`), so the
part of the ratio that is oneDNN (`circuitlab.model.matmul`, on CPUs where it is chosen) shows on its own; a fourth,
where circuitlab's own attention kernel is chosen (`circuitlab.model.attention`, heads of 16), the fast path with
torch's attention kernel instead (`CIRCUITLAB_ATTENTION=torch`), so that part shows too.

Both models hold the same weights (converted with circuitlab.model.bridge), train on the same stream of fresh corpus
batches (one per step, never repeated) with the same
AdamW settings and gradient clipping, and are timed in alternating rounds in one process, so machine noise hits both.
MFU = tokens/s x training FLOPs per token (PaLM's 6N + 12 L H d_head T) / a matmul peak measured in the same run.

    .venv/bin/python benchmarks/train_throughput.py [--batch-size 8] [--rounds 5] [--seconds 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from circuitlab.data import load_corpus, prepare_tokens
from circuitlab.data.windows import sample_windows
from circuitlab.model import ModelConfig, Transformer
from circuitlab.model import attention, matmul
from circuitlab.model.bridge import to_transformer_bridge
from circuitlab.training import get_preset
from circuitlab.training.config import TrainConfig
from circuitlab.training.allocator import keep_freed_memory
from circuitlab.training.flops import peak_matmul_flops, train_flops_per_token
from circuitlab.training.loop import make_optimizer


def step_fn(model, forward_loss, optimizer, clip: float = 1.0):
    opt = optimizer

    def step(tokens):
        loss = forward_loss(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def bridge_loss(bridge):
    def f(tokens):
        logits = bridge(tokens)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    return f


class Stream:
    """A fresh batch for every step, as real training sees them: windows of the embedded corpus (tokenized with the
    preset's vocabulary, from the cache) at offsets drawn from (seed 0, step). Each model keeps its own position in
    the same stream, so both see the same batches in the same order and neither can memorise them (cycling over a
    few fixed batches drove both into a near-zero-loss regime real training never sees, and the rounds drifted)."""

    def __init__(self, tokens, batch_size: int, n_ctx: int, device: str):
        self.tokens, self.batch_size, self.n_ctx, self.device, self.step = tokens, batch_size, n_ctx, device, 0

    def next(self) -> torch.Tensor:
        rng = np.random.default_rng([0, self.step])
        self.step += 1
        return sample_windows(self.tokens, self.batch_size, self.n_ctx, rng, bos=True).to(self.device)


def time_round(step, stream: Stream, seconds: float) -> float:
    """tokens/s over as many steps as fit in `seconds` (drawing the batches is timed too; it is the same for both)."""
    n, t0 = 0, time.perf_counter()
    while True:
        batch = stream.next()
        step(batch)
        n += batch.numel()
        if time.perf_counter() - t0 > seconds:
            return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="attn2")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one timed round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    keep_freed_memory()  # as the training loop runs (both contenders share the process)

    # The preset's sizes with standard positions: the native model cannot express shortformer positions.
    cfg = ModelConfig(**(get_preset(args.preset).model | {"positional_embedding_type": "standard"}))
    ours = Transformer(cfg).to(args.device)
    ours_torch = Transformer(cfg).to(args.device)
    ours_torch.load_state_dict(ours.state_dict())
    ours_sdpa = Transformer(cfg).to(args.device)
    ours_sdpa.load_state_dict(ours.state_dict())
    kernel = attention.backend() == "c16"
    names = ("circuitlab_fast_path", "circuitlab_fast_path_torch_matmul", "transformer_lens_native") + \
        (("circuitlab_fast_path_torch_attention",) if kernel else ())
    native = to_transformer_bridge(ours)
    data = prepare_tokens(load_corpus("stdlib"), cfg.d_vocab)
    streams = {name: Stream(data.train, args.batch_size, cfg.n_ctx, args.device)
               for name in names}
    first = Stream(data.train, args.batch_size, cfg.n_ctx, args.device).next()
    with torch.no_grad():
        assert torch.allclose(ours(first), native(first), atol=1e-4), "the two models must compute the same function"

    torch_step = step_fn(ours_torch, lambda t: ours_torch(t, return_type="loss"), make_optimizer(ours_torch, TrainConfig(lr=1e-3)))

    def with_torch_matmul(tokens):
        with matmul.forced("torch"):
            return torch_step(tokens)

    sdpa_step = step_fn(ours_sdpa, lambda t: ours_sdpa(t, return_type="loss"), make_optimizer(ours_sdpa, TrainConfig(lr=1e-3)))

    def with_torch_attention(tokens):
        with attention.forced("torch"):
            return sdpa_step(tokens)

    steps = {
        # ours: the trainer's own optimizer (fused AdamW); TL's: a plain AdamW with the same settings
        "circuitlab_fast_path": step_fn(ours, lambda t: ours(t, return_type="loss"), make_optimizer(ours, TrainConfig(lr=1e-3))),
        "circuitlab_fast_path_torch_matmul": with_torch_matmul,
        "transformer_lens_native": step_fn(native, bridge_loss(native), torch.optim.AdamW(
            native.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)),
    }
    if kernel:
        steps["circuitlab_fast_path_torch_attention"] = with_torch_attention
    for name, step in steps.items():  # warm-up
        for _ in range(3):
            step(streams[name].next())
    peak = peak_matmul_flops(args.device, n=1024, seconds=1.0)
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(time_round(step, streams[name], args.seconds))
    peak_after = peak_matmul_flops.__wrapped__(args.device, n=1024, seconds=1.0)
    with matmul.forced("torch"):
        peak_torch = peak_matmul_flops.__wrapped__(args.device, n=1024, seconds=1.0)

    fpt = train_flops_per_token(cfg)
    result = {
        "what": "training tokens/s, fused fast path vs TransformerLens TransformerBridge.boot_native, same weights and batches",
        "model": cfg.to_dict(),
        "batch_size": args.batch_size,
        "tokens_per_step": args.batch_size * cfg.n_ctx,
        "train_flops_per_token": fpt,
        "peak_matmul_flops": max(peak, peak_after),
        "peak_matmul_flops_torch": peak_torch,
        "matmul_backend": matmul.backend(),
        "attention_backend": attention.backend(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu": matmul.cpu_name(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device},
        "rounds": args.rounds, "seconds_per_round": args.seconds,
        "batches": "a fresh window batch of the stdlib corpus per step, the same stream for both models",
        "steps": {name: st.step for name, st in streams.items()},
    }
    for name, r in rates.items():
        med = statistics.median(r)
        result[name] = {"tokens_per_s_median": med, "tokens_per_s_rounds": r, "mfu": med * fpt / result["peak_matmul_flops"],
                        "mfu_of_torch_peak": med * fpt / peak_torch}
    tl = result["transformer_lens_native"]["tokens_per_s_median"]
    result["speedup"] = result["circuitlab_fast_path"]["tokens_per_s_median"] / tl
    result["speedup_torch_matmul"] = result["circuitlab_fast_path_torch_matmul"]["tokens_per_s_median"] / tl
    if kernel:
        result["speedup_torch_attention"] = result["circuitlab_fast_path_torch_attention"]["tokens_per_s_median"] / tl
    # Twice TransformerLens's rate is twice its MFU: what a 2x ratio asks of our step on this machine.
    result["mfu_for_2x"] = 2 * result["transformer_lens_native"]["mfu"]

    print(f"model: {cfg.n_layers}L d_model {cfg.d_model} {cfg.n_heads}x{cfg.d_head} n_ctx {cfg.n_ctx} vocab {cfg.d_vocab}, "
          f"batch {args.batch_size}; {torch.get_num_threads()} threads on {args.device}")
    print(f"matmul peak (1024^3 fp32, measured): {result['peak_matmul_flops'] / 1e9:.1f} GFLOP/s "
          f"({result['matmul_backend']}; torch's own a @ b: {peak_torch / 1e9:.1f}); attention: "
          f"{result['attention_backend']}")
    for name in steps:
        r = result[name]
        print(f"{name:>34}: {r['tokens_per_s_median']:>9,.0f} tokens/s  MFU {r['mfu']:.1%} ({r['mfu_of_torch_peak']:.1%} "
              f"of torch's peak)  (rounds: {', '.join(f'{x:,.0f}' for x in r['tokens_per_s_rounds'])})")
    also = f", {result['speedup_torch_attention']:.2f}x with torch's attention" if kernel else ""
    print(f"{'speedup':>34}: {result['speedup']:.2f}x ({result['speedup_torch_matmul']:.2f}x with torch's matmul{also})")
    print(f"{'2x would need':>34}: MFU {result['mfu_for_2x']:.1%} of the peak above (on {result['machine']['cpu']})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

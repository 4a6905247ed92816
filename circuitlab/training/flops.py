"""FLOP accounting for MFU (model FLOPs utilisation) against a matrix-multiply peak measured on this machine."""

from __future__ import annotations

import functools
import time

import torch

from circuitlab.model import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token: W_Q, W_K, W_V, W_O per layer, W_in/W_out, W_U.
    (W_E and W_pos are lookups.)"""
    attn = 4 * cfg.d_model * cfg.n_heads * cfg.d_head
    mlp = 2 * cfg.d_model * cfg.d_mlp
    return cfg.n_layers * (attn + mlp) + cfg.d_model * cfg.d_vocab


def train_flops_per_token(cfg: ModelConfig, n_ctx: int | None = None) -> int:
    """PaLM's estimate (Chowdhery et al. 2022, App. B): 6 N + 12 L H d_head T per token for forward + backward,
    where N counts matmul parameters and T is the context length (attention over the full context)."""
    T = n_ctx or cfg.n_ctx
    return 6 * matmul_params(cfg) + 12 * cfg.n_layers * cfg.n_heads * cfg.d_head * T


@functools.cache
def peak_matmul_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5) -> float:
    """Achieved FLOP/s of a large square matmul on this device, the faster of torch's `a @ b` and the fast paths'
    backend (`model.matmul`: oneDNN on some CPUs, where it runs twice MKL's rate): the roofline that MFU is measured
    against, so a faster kernel raises the roofline and not the MFU."""
    from circuitlab.model.matmul import backend, mm

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def rate(product) -> float:
        for _ in range(3):
            product(a, b)
        sync()
        reps, t0 = 0, time.perf_counter()
        while True:
            product(a, b)
            reps += 1
            if reps % 4 == 0:
                sync()
                if time.perf_counter() - t0 > seconds:
                    break
        return 2 * n**3 * reps / (time.perf_counter() - t0)

    torch_rate = rate(torch.mm)
    if a.device.type != "cpu" or backend() == "torch":
        return torch_rate
    return max(torch_rate, rate(mm))

"""Next-token cross-entropy, plain and fused with the unembedding.

The fused form is the training fast path's: for a small model the unembedding and the softmax over the vocabulary
are most of the step, and on a CPU the [rows, d_vocab] passes are memory-bound. Working in row chunks that fit in
cache, and producing dL/dlogits = softmax - onehot in the same pass (as Liger-Kernel's fused linear cross-entropy
does), keeps those passes in cache and never materialises the full logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from circuitlab.model.matmul import add_mm_, mm, mm_into


def lm_cross_entropy(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], per_token: bool = False
):
    """Next-token loss: position i predicts token i+1 (TransformerLens's lm_cross_entropy_loss)."""
    logits = logits[:, :-1]
    targets = tokens[:, 1:]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none" if per_token else "mean"
    )
    return loss.view(targets.shape) if per_token else loss


class LinearCrossEntropy(torch.autograd.Function):
    """mean_i [logsumexp(x_i W) - (x_i W)_{y_i}], with the gradients computed chunk by chunk in the forward pass.

    Per chunk z = x W: loss = m + log sum exp(z - m) - z_y with m = max z; then, in place on z,
    dL/dz = (softmax(z) - onehot(y)) / n, which gives dL/dx = dL/dz W^T and dL/dW += x^T dL/dz.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, y: Tensor, chunk: int) -> Tensor:
        n = x.shape[0]
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_x = torch.empty_like(x) if want_grad else None
        grad_W = torch.zeros_like(W) if want_grad else None
        total = x.new_zeros((), dtype=torch.float32)
        for s in range(0, n, chunk):
            xs, ys = x[s : s + chunk], y[s : s + chunk]
            z = mm(xs, W).float()  # (c, V)
            z_y = z.gather(1, ys[:, None])
            m = z.amax(-1, keepdim=True)
            z.sub_(m).exp_()
            sum_exp = z.sum(-1, keepdim=True)
            total += (m + sum_exp.log() - z_y).sum()
            if want_grad:
                z.mul_(sum_exp.reciprocal_().mul_(1.0 / n))  # softmax / n
                z[torch.arange(len(ys), device=z.device), ys] -= 1.0 / n
                g = z.to(x.dtype)
                mm_into(grad_x[s : s + chunk], g, W.T)
                add_mm_(grad_W, xs.T, g)
        ctx.save_for_backward(grad_x, grad_W)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_W = ctx.saved_tensors
        return grad_x * grad_out, grad_W * grad_out, None, None


def fused_lm_cross_entropy(
    resid: Float[Tensor, "batch pos d_model"], W_U: Float[Tensor, "d_model d_vocab"], tokens: Int[Tensor, "batch pos"],
    chunk: int | None = None,
) -> Tensor:
    """Same value and gradients as lm_cross_entropy(resid @ W_U, tokens), without the full logits tensor.
    Default chunk: rows whose logits take about 1 MB (cache-sized; measured fastest on a 2-core CPU)."""
    x = resid[:, :-1].reshape(-1, resid.shape[-1])
    chunk = chunk or max(1, 2**18 // W_U.shape[-1])
    return LinearCrossEntropy.apply(x, W_U, tokens[:, 1:].reshape(-1), chunk)


def masked_cross_entropy(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"],
                         mask: Tensor) -> Tensor:
    """Mean next-token cross-entropy where mask is true (mask[:, i]: position i's prediction of token i + 1 counts)."""
    return F.cross_entropy(logits[:, :-1][mask].float(), tokens[:, 1:][mask])


@torch.no_grad()
def masked_accuracy(model, tokens: Tensor, mask: Tensor) -> float:
    """Share of the masked next-token predictions that are right."""
    pred = model(tokens)[:, :-1].argmax(-1)
    return float((pred == tokens[:, 1:])[mask].float().mean())


FLUSH_SUBNORMAL_GRAD = True  # benchmarks/grokking_denormal.py turns it off to measure what it buys


class _ToFloat64(torch.autograd.Function):
    """x.double(), whose backward casts the float64 gradient to x's dtype with subnormal values set to zero.

    Once the grokking model has memorised its training set, the wrong answers' probabilities fall below float32's
    smallest normal number (1.2e-38), so the gradient of the float64 loss arrives at the float32 logits full of
    subnormal floats. Every backward product through W_U, the MLP and W_O then takes them as inputs, and Intel CPUs
    multiply subnormal operands in microcode: on session 18's Xeon (Ice Lake, MKL) the step at epoch 7,800 of the
    quick preset took 234 ms on one thread and 132 ms on two, against 74 and 47 at initialisation; with this flush
    87 and 50 (a one-off timing of the step; `benchmarks/grokking_denormal.py` times the training loop). `torch.set_flush_denormal` is no cure: it sets the calling
    thread only, not torch's other threads. Zeroing them changes nothing a float32 weight can hold: a gradient
    entry below 1.2e-38 moves AdamW's update by under 1e-30, far below a weight's last bit (the weights of 100
    epochs from epoch 7,800 came out identical to the bit; tests/test_grokking.py checks the gradients)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.dtype = x.dtype
        return x.double()

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        g = g.to(ctx.dtype)
        if FLUSH_SUBNORMAL_GRAD:
            g = g.masked_fill_(g.abs() < torch.finfo(g.dtype).tiny, 0.0)
        return g


def modular_loss(logits: Float[Tensor, "batch d_vocab"], labels: Tensor, p: int) -> Tensor:
    """Cross-entropy over the p answers in float64, as the grokking paper's code computes it (Nanda et al. 2023):
    once the training set is memorised the loss is ~1e-7, where float32 log-softmax rounds and the updates turn
    into periodic loss spikes. The '=' column of W_U is never a target (as if d_vocab_out = p). The gradient comes
    back to the logits without subnormal floats (`_ToFloat64`)."""
    x = logits[:, :p]
    wide = _ToFloat64.apply(x) if x.requires_grad and x.dtype != torch.float64 else x.double()
    return F.cross_entropy(wide, labels)


def modular_loss_and_accuracy(logits: Float[Tensor, "batch d_vocab"], labels: Tensor, p: int) -> tuple[Tensor, float]:
    """`modular_loss` and the accuracy of the argmax over the p answers."""
    return modular_loss(logits, labels, p), modular_accuracy(logits, labels, p)


def modular_accuracy(logits: Float[Tensor, "batch d_vocab"], labels: Tensor, p: int) -> float:
    """The share of rows whose argmax over the p answers is the label."""
    return float((logits[:, :p].argmax(-1) == labels).float().mean())

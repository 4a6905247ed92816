"""The explorer's data: a run's checkpoints (or one model) on one text, with the head scores of Olsson et al. (2022)
at every checkpoint, ready for `circuitlab.viz.html`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitlab.circuits.heads import head_scores
from circuitlab.data import BOS_ID
from circuitlab.errors import CircuitlabError
from circuitlab.viz import html
from circuitlab.viz.views import TOP_KEYS, TOP_LOGITS, Text, id_dtype, language_text, model_view, modular_text

SCORES = ("induction", "prefix_matching", "previous_token")
MIN_CTX_FOR_SCORES = 12  # the head evaluators need a few repeated tokens; a grokking model (n_ctx 3) has none


@dataclass
class View:
    """What `circuitlab.viz` returns: shown inline by Jupyter and VS Code (`_repr_html_`), or saved as a page."""

    data: dict

    def _repr_html_(self) -> str:
        return html.element(self.data)

    def save(self, path: str | Path) -> Path:
        return html.write_page(self.data, Path(path), self.data["title"])

    @property
    def size(self) -> int:
        """Bytes of the page `save` writes."""
        return len(html.page(self.data, self.data["title"]).encode())


def choose_checkpoints(steps: list[int], n: int) -> list[int]:
    """At most n of the steps, evenly spread over their order, always the first and the last."""
    if n < 1:
        raise CircuitlabError(f"--checkpoints must be at least 1 (got {n})")
    if len(steps) <= n:
        return list(steps)
    if n == 1:
        return [steps[-1]]
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, n)).astype(int))
    return [steps[i] for i in idx]


def _scores(model, bos: int | None) -> dict[str, list[float]] | None:
    if model.cfg.n_ctx < MIN_CTX_FOR_SCORES:
        return None
    s = head_scores(model, bos=bos)
    return {k: [round(float(x), 4) for x in getattr(s, k).reshape(-1)] for k in SCORES}


def _vocab(ids: set[int], decode) -> dict[str, str]:
    return {str(i): decode(i) for i in sorted(ids)}


def build(models, text: Text, title: str, decode, bos: int | None, notes: list[str] | None = None,
          scores: bool = True, on_checkpoint=None) -> View:
    """models: an iterable of (checkpoint info {"step", "tokens"} or {"label"}, model). decode: token id -> string."""
    checkpoints, score_rows, ids = [], [], set(text.flat_ids) | {t for t in text.targets if t >= 0}
    cfg = None
    for i, (meta, model) in enumerate(models):
        cfg = model.cfg
        v = model_view(model, text)
        ids |= set(v.pop("vocab_ids"))
        checkpoints.append({**meta, **v})
        if scores:
            score_rows.append(_scores(model, bos))
        if on_checkpoint:
            on_checkpoint(i)
    if cfg is None:
        raise CircuitlabError("there is no checkpoint to show")
    bos_at = [sum(text.lengths[:w]) for w in range(len(text.lengths))] if bos is not None else []
    have_scores = scores and score_rows and score_rows[0] is not None
    data = {
        "title": title, "kind": text.kind, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "T": len(text.strings),
        "top_keys": TOP_KEYS, "top_logits": TOP_LOGITS, "id_bytes": np.dtype(id_dtype(cfg.d_vocab)).itemsize,
        "tokens": text.strings, "targets": text.targets, "bos_at": bos_at,
        "loss_shift": 1 if text.kind == "language_model" else 0,
        "vocab": _vocab(ids, decode), "checkpoints": checkpoints,
        "scores": {k: [row[k] for row in score_rows] for k in SCORES} if have_scores else None,
        "start": list(_start_head(score_rows, cfg) if have_scores else (max(cfg.n_layers - 1, 0), 0)),
        "notes": (notes or []) + text.notes,
    }
    return View(data)


def _start_head(score_rows, cfg) -> tuple[int, int]:
    """The head shown first: the best induction head at the last checkpoint."""
    best = int(np.argmax(score_rows[-1]["induction"]))
    return best // cfg.n_heads, best % cfg.n_heads


def read_text(text: str) -> tuple[str, str]:
    """(the text, where it came from): the file at `text` if there is one, else the string itself."""
    p = Path(text)
    if not text.strip():
        return text, "the text given"
    try:
        if len(text) < 4096 and "\n" not in text and p.is_file():
            return p.read_text(encoding="utf-8", errors="replace"), str(p)
        if len(text) < 4096 and "\n" not in text and p.is_dir():
            raise CircuitlabError(f"{p} is a folder: give a text file or a string with --text")
    except OSError as e:
        raise CircuitlabError(f"{p} cannot be read ({e.strerror}): give a readable text file or a string") from None
    return text, "the text given"


def run_text(run, text: str, max_tokens: int = 512) -> tuple[Text, int | None, object]:
    """The text as `run` reads it, its BOS (or None), and a decoder of token ids."""
    kind = run.task.get("kind")
    if kind == "modular_addition":
        p = int(run.task["p"])
        return modular_text(text, p), None, (lambda i: "=" if i == p else str(i))
    if kind != "language_model":
        raise CircuitlabError(f"run {run.path} is a {kind!r} run: the explorer reads language-model and modular-addition "
                              "runs")
    tok = run.tokenizer
    if tok is None:
        raise CircuitlabError(f"{run.path / 'tokenizer.json'} is missing: the run's text cannot be tokenized; restore "
                              "it or train the run again")
    bos = BOS_ID if run.train_config.bos else None
    t = language_text(text, tok, run.config.n_ctx, bos, max_tokens)
    if not t.strings or all(s == "⟨BOS⟩" for s in t.strings):
        raise CircuitlabError("the text is empty: give a file or a string with some text in it")
    return t, bos, (lambda i: tok.decode([i]))


def explore(run, text: str, checkpoints: int = 100, max_tokens: int = 512, on_checkpoint=None,
            device: str = "cpu") -> View:
    """A run's checkpoints (at most `checkpoints` of them, evenly spread) on `text` (a string; see `read_text`)."""
    from circuitlab.training import Run
    from circuitlab.training.checkpoints import checkpoint_path, load_checkpoint

    run = run if isinstance(run, Run) else Run.open(run)
    steps = run.checkpoints
    if not steps:
        raise CircuitlabError(f"run {run.path} has no checkpoints yet: train it (or --resume) first")
    chosen = choose_checkpoints(steps, checkpoints)
    t, bos, decode = run_text(run, text, max_tokens)
    lm = run.task.get("kind") == "language_model"

    def models():
        for s in chosen:
            model, info = load_checkpoint(checkpoint_path(run.path, s), run.config, device)
            label = f"step {s:,} · {info['tokens']:,} tokens" if lm else f"epoch {s:,}"
            yield {"step": s, "tokens": info["tokens"], "label": label}, model

    notes = [] if len(chosen) == len(steps) else [f"{len(chosen)} of the run's {len(steps)} checkpoints, evenly spread"]
    with torch.no_grad():
        return build(models(), t, f"{run.path.name}: {run.config.n_layers}-layer model", decode, bos, notes,
                     on_checkpoint=on_checkpoint)

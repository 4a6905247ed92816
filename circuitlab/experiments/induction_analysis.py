"""Analysis of the induction-heads experiment's measured runs: phase-change windows, controls, per-token-loss PCA,
ablations over checkpoints, behaviours, attention-viewer data, and the claims (Olsson et al. 2022)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from circuitlab.experiments.claims import Claim, verdict
from circuitlab.induction.icl import icl_positions, per_token_pca, pca_pivot
from circuitlab.induction.measure import pca_matrix
from circuitlab.induction.phase import Window, jump_window, loss_bump, overlaps

PAPER = "Olsson et al. 2022"
# An induction head: induction score >= 0.1, i.e. several times the attention a uniform pattern gives the
# target (1/76 on average over the repeat of 2 x 50 tokens), and at least half the model's best score.
INDUCTION_HEAD = 0.1
COPYING_NAME = "zorblax_quintile"
COPYING_PASSAGE = (
    "def load_zorblax_quintile(path):\n"
    '    """Read a zorblax_quintile table from path."""\n'
    "    with open(path) as f:\n"
    "        zorblax_quintile = parse(f.read())\n"
    "    return zorblax_quintile\n"
)
_CURVE_KEYS = ("tokens", "step", "heldout_loss", "icl", "best_induction", "best_prefix_matching",
               "repeat_first_half_loss", "repeat_second_half_loss")


def read_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "measurements.jsonl").read_text().splitlines() if line.strip()]
    return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def smooth(values: list[float], k: int = 5) -> list[float]:
    """Centred running median over k points (the per-checkpoint measurements are noisy)."""
    v = np.asarray(values, dtype=float)
    h = k // 2
    return [float(np.median(v[max(0, i - h) : i + h + 1])) for i in range(len(v))]


def induction_heads(row: dict) -> list[tuple[int, int]]:
    s = np.asarray(row["induction"])
    best = s.max()
    return [(int(l), int(h)) for l, h in zip(*np.nonzero((s >= INDUCTION_HEAD) & (s >= 0.5 * best)))]


def _value_at(rows: list[dict], tokens: int | None, key: str) -> float | None:
    if tokens is None:
        return None
    return min(rows, key=lambda r: abs(r["tokens"] - tokens))[key]


def phase_windows(rows: list[dict]) -> dict:
    t = [r["tokens"] for r in rows]
    has_heads = "best_induction" in rows[0]
    ind = jump_window(t, smooth([r["best_induction"] for r in rows])) if has_heads else Window(None, None, None)
    icl = jump_window(t, smooth([r["icl"] for r in rows]), increasing=False)
    return {"induction": ind.to_json(), "icl": icl.to_json()}


def _fmt_tokens(t: int | None) -> str:
    return "–" if t is None else (f"{t / 1e6:.1f}M" if t >= 1e6 else f"{t / 1e3:.0f}k")


def window_text(w: dict) -> str:
    return "none found" if w["start"] is None else f"{_fmt_tokens(w['start'])}–{_fmt_tokens(w['end'])} tokens"


def analyze_ablations(run, rows: list[dict], windows: torch.Tensor, group: list[tuple[int, int]], points: int) -> dict:
    """Pattern-preserving ablation of every head (and of the induction-head group) at `points` checkpoints
    log-spaced over training, plus a full ablation at the last checkpoint."""
    from circuitlab.induction.ablation import ablate_heads

    trained = [r for r in rows if r["step"] > 0]
    idx = np.unique(np.round(np.geomspace(1, len(trained), points)).astype(int) - 1)
    series = []
    for i in idx:
        r = trained[i]
        a = ablate_heads(run.model(r["step"]), windows, group, preserve_patterns=True)
        series.append({"step": r["step"], "tokens": r["tokens"], **a.to_json()})
    full = ablate_heads(run.model(), windows, group, preserve_patterns=False).to_json()
    return {"group": [f"{l}.{h}" for l, h in group], "over_training": series, "final_full": full}


def behaviours(out: Path, run, head: tuple[int, int] | None, task_steps: int) -> dict:
    from circuitlab.data.synthetic import pattern_task, translation_task
    from circuitlab.induction.behaviours import copying_behaviour, pattern_behaviour, translation_behaviour
    from circuitlab.model import ModelConfig
    from circuitlab.training.synthetic import train_task

    res: dict = {}
    if head is not None:
        try:
            res["copying"] = copying_behaviour(run.model(), run.tokenizer, COPYING_PASSAGE, COPYING_NAME, head).to_json()
        except ValueError as e:  # the passage does not fit a tiny context
            res["copying"] = {"skipped": str(e)}
    small = dict(n_layers=2, d_model=64, n_heads=4, d_head=16)
    task = translation_task()
    model, info = train_task(ModelConfig(**small, n_ctx=task.n_ctx, d_vocab=task.d_vocab), task,
                             out / "tasks" / "translation", steps=task_steps)
    res["translation"] = {**translation_behaviour(model, task).to_json(), "training": info}
    task = pattern_task()
    model, info = train_task(ModelConfig(**small, n_ctx=task.n_ctx, d_vocab=task.d_vocab, smeared_keys=True), task,
                             out / "tasks" / "pattern", steps=2 * task_steps)
    res["pattern"] = {**pattern_behaviour(model, task).to_json(), "training": info}
    return res


@torch.no_grad()
def attention_viewer(run, windows: torch.Tensor, copy_text: str) -> list[dict]:
    """Prompts for the report's attention viewer: held-out text repeated, and the rare-identifier passage; every
    head's pattern, rounded to 3 decimals."""
    from circuitlab.circuits.heads import attention_patterns

    model, tok = run.model(), run.tokenizer
    decode = lambda t: "<bos>" if t == 0 else tok.decode([int(t)])  # noqa: E731
    half = windows[0, 1 : 1 + min(30, (model.cfg.n_ctx - 1) // 2)]
    prompts = [("held-out text, repeated", torch.cat([torch.zeros(1, dtype=torch.long), half, half])[None]),
               ("rare identifier, repeated", torch.tensor([[0] + tok.encode(copy_text).ids[: model.cfg.n_ctx - 1]]))]
    out = []
    for title, tokens in prompts:
        p = attention_patterns(model, tokens)[:, 0]  # [layer, head, q, k]
        out.append({"title": title, "tokens": [decode(t) for t in tokens[0].tolist()],
                    "patterns": np.round(p.numpy(), 3).tolist()})
    return out


def analyze_induction(preset, out: Path) -> dict:
    from safetensors.torch import load_file

    from circuitlab.training import Run

    runs = {n: Run.open(out / "runs" / n) for n in preset.models}
    rows = {n: read_rows(out / "runs" / n) for n in runs}
    probe = load_file(str(out / "probe.safetensors"))
    n_ctx = runs[next(iter(runs))].config.n_ctx
    early, late = icl_positions(n_ctx)
    models = {}
    for n, rs in rows.items():
        final = rs[-1]
        models[n] = {
            "config": runs[n].config.to_dict(), "train": runs[n].train_config.to_dict(),
            "curve": [{k: r.get(k) for k in _CURVE_KEYS} for r in rs],
            "train_loss": [{"tokens": m["tokens"], "train_loss": m["train_loss"]} for m in runs[n].metrics
                           if m.get("train_loss") is not None],
            "final": {k: final.get(k) for k in ("induction", "prefix_matching", "copying", "previous_token",
                                                "duplicate_token", "icl", "heldout_loss", "tokens")},
            "induction_heads": [f"{l}.{h}" for l, h in induction_heads(final)] if "induction" in final else [],
            "windows": phase_windows(rs),
        }
    main = "2L"
    r2 = rows[main]
    w = models[main]["windows"]
    bump = loss_bump([r["tokens"] for r in rows["1L"]], smooth([r["heldout_loss"] for r in rows["1L"]]),
                     [r["tokens"] for r in r2], smooth([r["heldout_loss"] for r in r2])).to_json()
    traj, var = per_token_pca(pca_matrix(r2))
    pivot = pca_pivot(traj)
    # loss by position at three moments: before the window, after it, and at the end
    ind_w = w["induction"]
    moments = {"start": r2[1]["tokens"], "before": ind_w["start"], "after": ind_w["end"], "final": r2[-1]["tokens"]}
    by_pos = {n: {k: _value_at(rows[n], t, "loss_by_position") for k, t in moments.items() if t is not None}
              for n in ("1L", main)}
    group = induction_heads(r2[-1])
    windows = probe["windows"][:512]
    ablation = analyze_ablations(runs[main], r2, windows, group, preset.ablation_points)
    head = max(group, key=lambda lh: r2[-1]["induction"][lh[0]][lh[1]]) if group else None
    beh = behaviours(out, runs[main], head, preset.task_steps)
    result = {
        "experiment": "induction", "preset": preset.name, "differs_from_paper": preset.differs,
        "icl_positions": {"early": early, "late": late, "n_ctx": n_ctx,
                          "note": f"ICL score = loss of token {late} - loss of token {early} (paper: 500 and 50 of 512)"},
        "models": models, "loss_bump": bump,
        "pca": {"trajectory": traj.tolist(), "explained_variance": var.tolist(), "pivot_index": pivot,
                "pivot_tokens": r2[pivot]["tokens"], "tokens": [r["tokens"] for r in r2],
                "examples": len(r2[0]["pca_losses"])},
        "loss_by_position": {"moments": moments, "curves": by_pos},
        "ablation": ablation, "behaviours": beh,
        "attention_viewer": attention_viewer(runs[main], probe["windows"], COPYING_PASSAGE),
    }
    result["claims"] = [c.to_json() for c in induction_claims(result)]
    return result


def induction_claims(r: dict) -> list[Claim]:
    m, icl_note = r["models"], f"ICL = loss(token {r['icl_positions']['late']}) − loss(token {r['icl_positions']['early']})"
    two = m["2L"]
    curve = two["curve"]
    wi, wl = two["windows"]["induction"], two["windows"]["icl"]
    before_t = wi["start"] if wi["start"] is not None else curve[1]["tokens"]
    at = lambda n, t, k: _value_at(m[n]["curve"], t, k)  # noqa: E731
    final = curve[-1]
    claims = []
    jump = wi["start"] is not None and final["best_induction"] >= INDUCTION_HEAD
    claims.append(Claim(
        PAPER, "Two-layer attention-only models form induction heads in a phase change: a narrow window of training",
        f"best induction score jumps to ≥ {INDUCTION_HEAD} within a window",
        f"window {window_text(wi)}; best induction score {at('2L', before_t, 'best_induction'):.3f} → "
        f"{final['best_induction']:.3f} (final, {_fmt_tokens(final['tokens'])} tokens); heads "
        f"{', '.join(two['induction_heads']) or 'none'}", verdict(jump), "induction-phase"))
    icl_ok = wl["start"] is not None and overlaps(Window(**wi), Window(**wl))
    claims.append(Claim(
        PAPER, "In-context learning improves abruptly in the same window as the induction heads form",
        "ICL-score window overlaps the induction window",
        f"{icl_note}: {at('2L', before_t, 'icl'):.3f} → {final['icl']:.3f}; ICL window {window_text(wl)}",
        verdict(icl_ok), "induction-phase"))
    bump = r["loss_bump"]
    claims.append(Claim(
        PAPER, "The phase change shows as a bump in the loss: the 2L loss curve departs from the 1L curve",
        "loss-bump window overlaps the induction window",
        f"L_2L − L_1L falls fastest over {window_text(bump)}", verdict(overlaps(Window(**bump), Window(**wi))),
        "induction-phase"))
    share = wl["share"]
    claims.append(Claim(
        PAPER, "Most of the final in-context learning forms inside the phase-change window", "> 75% of the ICL change",
        "no ICL window" if share is None else
        f"{100 * share:.0f}% of the change from the early level to the final ICL score (smoothed, 5 checkpoints)",
        verdict(share is not None and share > 0.75), "induction-phase"))
    pca = r["pca"]
    in_w = overlaps(Window(pca["pivot_tokens"], pca["pivot_tokens"], None), Window(**wi))
    claims.append(Claim(
        PAPER, "The per-token-loss PCA trajectory turns at the phase change", "pivot inside the induction window",
        f"pivot at {_fmt_tokens(pca['pivot_tokens'])} tokens ({pca['examples']} held-out examples, one token each; "
        f"PC1+PC2 explain {100 * sum(pca['explained_variance']):.0f}%)", verdict(in_w), "induction-pca"))
    one = m["1L"]
    one_best = max(c["best_induction"] for c in one["curve"][1:])
    claims.append(Claim(
        PAPER, "Control: a one-layer model forms no induction heads, no phase change, and less in-context learning",
        f"1L best induction score < {INDUCTION_HEAD} throughout; 1L ICL weaker than 2L",
        f"1L best induction score ≤ {one_best:.3f} over training; ICL 1L {one['curve'][-1]['icl']:.3f} vs 2L "
        f"{final['icl']:.3f}", verdict(one_best < INDUCTION_HEAD and one["curve"][-1]["icl"] > final["icl"]),
        "induction-controls"))
    if "1L-smeared" in m:
        s1 = m["1L-smeared"]
        ok = s1["curve"][-1]["best_induction"] >= INDUCTION_HEAD and s1["windows"]["induction"]["start"] is not None
        claims.append(Claim(
            PAPER, "Smeared keys let a one-layer model form induction heads, with a phase change",
            f"1L smeared: best induction ≥ {INDUCTION_HEAD}, with a window",
            f"best induction {s1['curve'][-1]['best_induction']:.3f}; window {window_text(s1['windows']['induction'])};"
            f" ICL {s1['curve'][-1]['icl']:.3f}", verdict(ok), "induction-controls"))
    if "2L-smeared" in m:
        s2 = m["2L-smeared"]["windows"]["induction"]
        ok = s2["end"] is not None and wi["end"] is not None and s2["end"] < wi["start"]
        claims.append(Claim(
            PAPER, "Smeared keys make a two-layer model form induction heads earlier",
            "2L-smeared window ends before the 2L window starts",
            f"2L smeared {window_text(s2)} vs 2L {window_text(wi)}", verdict(ok), "induction-controls"))
    ab = r["ablation"]
    last = ab["over_training"][-1] if ab["over_training"] else None
    if last and last["group_share"] is not None:
        claims.append(Claim(
            PAPER, "Pattern-preserving ablation: the induction heads carry almost all of the in-context learning",
            "ablating the induction heads removes most (> 50%) of the ICL score",
            f"heads {', '.join(ab['group'])}: ICL {last['clean_icl']:.3f} → {last['clean_icl'] + last['group']:.3f} "
            f"({100 * last['group_share']:.0f}% removed) at {_fmt_tokens(last['tokens'])} tokens",
            verdict(last["group_share"] > 0.5), "induction-ablation"))
        others = sum(len(x) for x in last["per_head"]) - len(ab["group"])
        claims.append(Claim(
            PAPER, "Ablating most other heads increases the ICL score (makes it more negative)",
            "more than half of the other heads", f"{last['heads_raising_icl']} of {others} other heads",
            verdict(others > 0 and last["heads_raising_icl"] > others / 2), "induction-ablation"))
    b = r["behaviours"]
    if "copying" in b and "skipped" not in b["copying"]:
        c = b["copying"]
        claims.append(Claim(
            PAPER, "Induction heads copy: a repeated rare identifier is predicted from its earlier occurrence",
            "lower loss on the repeat; the head attends to the token after the earlier copy",
            f"'{COPYING_NAME}' ({len(c['name_tokens'])} tokens): loss {c['first_loss']:.2f} → {c['repeat_loss']:.2f} nats;"
            f" head {c['head']} puts {c['head_attention']:.2f} of its attention on the induction target",
            verdict(c["improvement"] > 0.5 and c["head_attention"] > 0.3), "induction-behaviours"))
    t = b["translation"]
    claims.append(Claim(
        PAPER, "Fuzzy induction: a head matches on meaning ([A*][B*] … [A] → [B]), not on identity",
        "a head attends from A to the token after its translation A*",
        f"head {t['best_head']}: {t['best_score']:.2f} of its attention (uniform: {t['chance']:.2f}); next-word accuracy "
        f"{100 * t['accuracy']:.0f}% (2L model trained on the synthetic task)", verdict(t["best_score"] > 0.5),
        "induction-behaviours"))
    p = b["pattern"]
    claims.append(Claim(
        PAPER, "Pattern matching: from ':' a head attends to earlier examples of the same (month|colour) (animal|fruit) "
        "pattern", "≈65% of attention on the right earlier examples (13B model's head)",
        f"head {p['best_head']}: {100 * p['best_share']:.0f}% (uniform: {100 * p['uniform']:.0f}%); label accuracy "
        f"{100 * p['accuracy']:.0f}% (chance 25%; 2L smeared-key model trained on the task)",
        verdict(p["best_share"] > 0.5 and p["accuracy"] > 0.5), "induction-behaviours"))
    return claims

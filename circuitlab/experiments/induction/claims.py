"""The induction-heads paper's claims (Olsson et al. 2022), judged on the experiment's typed results."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from circuitlab.experiments.claims import Claim, verdict
from circuitlab.heads import INDUCTION
from circuitlab.induction.phase import (
    ABRUPT_DECADES, BUMP_SLOPE_RATIO, SETTLE_DECADES, LossBump, Window, contains, overlaps, settled, share_inside,
)
from circuitlab.series import running_median

if TYPE_CHECKING:
    from circuitlab.experiments.induction.results import InductionResults, ModelCurves

PAPER = "Olsson et al. 2022"
# "Almost all" of the in-context learning, as the paper says of its small models' induction heads: three quarters,
# the same bar as "> 75% of the final ICL forms in the phase-change window".
ALMOST_ALL = 0.75
COPYING_NAME = "zorblax_quintile"


def fmt_tokens(t: int | None) -> str:
    return "–" if t is None else (f"{t / 1e6:.1f}M" if t >= 1e6 else f"{t / 1e3:.0f}k")


def window_text(w: Window) -> str:
    return "none found" if w.start is None else f"{fmt_tokens(w.start)}–{fmt_tokens(w.end)} tokens"


def value_at(curve, tokens: int | None, key: str):
    if tokens is None:
        return None
    return getattr(min(curve, key=lambda r: abs(r.tokens - tokens)), key)


def _num(x, spec: str = ".3f") -> str:
    """A measured number, or '–' where there is none (a 0-layer model has no head scores)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _best(curve) -> float:
    """The highest best-induction score over training after the initial checkpoint (0 where none is measured)."""
    scores = [c.best_induction for c in curve[1:] if c.best_induction is not None]
    return max(scores) if scores else 0.0


def _decades(w: Window) -> str:
    return f" ({w.decades:.2f} decades)" if w.decades is not None else ""


def phase_change_claims(two: "ModelCurves", bump: LossBump, pca_pivot_tokens: int | None, pca_text: str,
                        icl_note: str) -> list[Claim]:
    """The claims about the 2L phase change. Each needs the phase change itself first: an abrupt window (10% -> 90%
    of the smoothed best induction score's rise within ABRUPT_DECADES decades of tokens) to a score >= INDUCTION,
    which has settled (`phase.settled`: training went on past the window by its width). A rise still under way when
    training ends has no known end, so its window cannot be judged narrow."""
    curve = two.curve
    wi, wl = two.windows.induction, two.windows.icl
    before_t = wi.start if wi.found else curve[min(1, len(curve) - 1)].tokens
    final = curve[-1]
    tokens = [c.tokens for c in curve]
    best = [c.best_induction for c in curve]
    done = settled(tokens, best, INDUCTION) if None not in best else None
    phase = wi.abrupt and final.best_induction is not None and final.best_induction >= INDUCTION and done is not None
    gate = "" if phase else "; no phase change in the induction score, so none to coincide with"
    claims = [Claim(
        PAPER, "Two-layer attention-only models form induction heads in a phase change: a narrow window of training",
        f"best induction score rises to ≥ {INDUCTION}, 10%→90% of the rise within ≤ {ABRUPT_DECADES} decades of "
        f"tokens, and settled (training goes on past it by its width, ≥ {SETTLE_DECADES} decades)",
        f"window {window_text(wi)}{_decades(wi)}; best induction score {_num(value_at(curve, before_t, 'best_induction'))}"
        f" → {_num(final.best_induction)} (final, {fmt_tokens(final.tokens)} tokens); heads "
        f"{', '.join(map(str, two.induction_heads)) or 'none'}"
        + (f"; settled: {done}" if done else
           f"; training ended at {fmt_tokens(final.tokens)} tokens (its cap) before a rise had settled (on another "
           "corpus heads may form later: raise the cap, --max-tokens)"),
        verdict(phase), "induction-phase")]
    claims.append(Claim(
        PAPER, "In-context learning improves abruptly in the same window as the induction heads form",
        f"the ICL score's own window is abrupt (≤ {ABRUPT_DECADES} decades) and overlaps the induction window",
        f"{icl_note}: {value_at(curve, before_t, 'icl'):.3f} → {final.icl:.3f}; ICL window {window_text(wl)}{_decades(wl)}"
        + gate, verdict(phase and wl.abrupt and overlaps(wi, wl)), "induction-phase"))
    claims.append(Claim(
        PAPER, "The phase change shows as a bump in the loss: the 2L training loss departs from the 1L curve",
        f"inside the induction window the gap L_2L − L_1L (training loss) falls ≥ {BUMP_SLOPE_RATIO:g}× as fast per "
        "decade as just before and after it, beyond its noise",
        (f"the gap falls {bump.drop:.3f} nats inside the window; slope {bump.slope_inside:+.3f} vs "
         f"{bump.slope_before:+.3f} before and {bump.slope_after:+.3f} after (nats per decade); noise {bump.noise:.3f}"
         if bump.drop is not None else "no bump measured") + (f"; {bump.reason}" if bump.reason else ""),
        verdict(phase and bump.found), "induction-phase"))
    share = share_inside(tokens, running_median([c.icl for c in curve]), wi, increasing=False) if phase else None
    claims.append(Claim(
        PAPER, "Most of the final in-context learning forms inside the phase-change window",
        "> 75% of the ICL change (early level → final) inside the induction window",
        (f"{100 * share:.0f}% of the change from the early level to the final ICL score (smoothed, 5 checkpoints) "
         f"inside {window_text(wi)}" if share is not None else "no share measured") + gate,
        verdict(share is not None and share > 0.75), "induction-phase"))
    pivot_in = phase and pca_pivot_tokens is not None and contains(wi, pca_pivot_tokens)
    claims.append(Claim(
        PAPER, "The per-token-loss PCA trajectory turns at the phase change", "pivot inside the induction window",
        f"pivot at {fmt_tokens(pca_pivot_tokens)} tokens ({pca_text})" + gate, verdict(pivot_in), "induction-pca"))
    return claims


def induction_claims(r: "InductionResults") -> list[Claim]:
    m, icl_note = r.models, f"ICL = loss(token {r.icl_positions.late}) − loss(token {r.icl_positions.early})"
    two = m["2L"]
    wi = two.windows.induction
    final = two.curve[-1]
    pca = r.pca
    claims = phase_change_claims(two, r.loss_bump, pca.pivot_tokens, f"{pca.examples} held-out examples, one token "
                                 f"each; PC1+PC2 explain {100 * sum(pca.explained_variance):.0f}%", icl_note)
    one = m["1L"]
    one_best = _best(one.curve)
    claims.append(Claim(
        PAPER, "Control: a one-layer model forms no induction heads, no phase change, and less in-context learning",
        f"1L best induction score < {INDUCTION} throughout; 1L ICL weaker than 2L",
        f"1L best induction score ≤ {one_best:.3f} over training; ICL 1L {one.curve[-1].icl:.3f} vs 2L "
        f"{final.icl:.3f}", verdict(one_best < INDUCTION and one.curve[-1].icl > final.icl),
        "induction-controls"))
    if "1L-smeared" in m:
        s1 = m["1L-smeared"]
        ok = (s1.curve[-1].best_induction or 0.0) >= INDUCTION and s1.windows.induction.abrupt
        claims.append(Claim(
            PAPER, "Smeared keys let a one-layer model form induction heads, with a phase change",
            f"1L smeared: best induction ≥ {INDUCTION}, in an abrupt window (≤ {ABRUPT_DECADES} decades)",
            f"best induction {_num(s1.curve[-1].best_induction)}; window {window_text(s1.windows.induction)}"
            f"{_decades(s1.windows.induction)};"
            f" ICL {s1.curve[-1].icl:.3f}", verdict(ok), "induction-controls"))
    if "2L-smeared" in m:
        s2 = m["2L-smeared"].windows.induction
        ok = s2.abrupt and wi.abrupt and s2.end < wi.start
        claims.append(Claim(
            PAPER, "Smeared keys make a two-layer model form induction heads earlier",
            "both have an abrupt window; the 2L-smeared one ends before the 2L one starts",
            f"2L smeared {window_text(s2)} vs 2L {window_text(wi)}", verdict(ok), "induction-controls"))
    ab = r.ablation
    last = ab.over_training[-1] if ab.over_training else None
    measured = last is not None and last.group_share is not None
    why = ("no ablation measured" if last is None else "no induction heads to ablate" if not ab.group
           else f"no in-context learning to remove (clean ICL score {last.clean_icl:+.3f})")
    claims.append(Claim(
        PAPER, "Pattern-preserving ablation: the induction heads carry almost all of the in-context learning",
        f"ablating the induction heads removes almost all (≥ {ALMOST_ALL:.0%}) of the ICL score",
        f"heads {', '.join(map(str, ab.group))}: ICL {last.clean_icl:.3f} → {last.clean_icl + last.group:.3f} "
        f"({100 * last.group_share:.0f}% removed) at {fmt_tokens(last.tokens)} tokens" if measured else why,
        verdict(measured and last.group_share >= ALMOST_ALL), "induction-ablation"))
    others = sum(len(x) for x in last.per_head) - len(ab.group) if last else 0
    claims.append(Claim(
        PAPER, "Ablating most other heads increases the ICL score (makes it more negative)",
        "more than half of the other heads",
        f"{last.heads_raising_icl} of {others} other heads" if measured else why,
        verdict(measured and others > 0 and last.heads_raising_icl > others / 2), "induction-ablation"))
    b = r.behaviours
    c = b.copying
    claims.append(Claim(
        PAPER, "Induction heads copy: a repeated rare identifier is predicted from its earlier occurrence",
        "lower loss on the repeat; the head attends to the token after the earlier copy",
        f"'{COPYING_NAME}' ({len(c.name_tokens)} tokens): loss {c.first_loss:.2f} → {c.repeat_loss:.2f} nats;"
        f" head {c.head} puts {c.head_attention:.2f} of its attention on the induction target" if c is not None
        else f"not measured: {b.copying_skipped}",
        verdict(c is not None and c.improvement > 0.5 and c.head_attention > 0.3), "induction-behaviours"))
    t = b.translation
    claims.append(Claim(
        PAPER, "Fuzzy induction: a head matches on meaning ([A*][B*] … [A] → [B]), not on identity",
        "a head attends from A to the token after its translation A*",
        f"head {t.best_head}: {t.best_score:.2f} of its attention (uniform: {t.chance:.2f}); next-word accuracy "
        f"{100 * t.accuracy:.0f}% (2L model trained on the synthetic task)", verdict(t.best_score > 0.5),
        "induction-behaviours"))
    p = b.pattern
    claims.append(Claim(
        PAPER, "Pattern matching: from ':' a head attends to earlier examples of the same (month|colour) (animal|fruit) "
        "pattern", "≈65% of attention on the right earlier examples (13B model's head)",
        f"head {p.best_head}: {100 * p.best_share:.0f}% (uniform: {100 * p.uniform:.0f}%); label accuracy "
        f"{100 * p.accuracy:.0f}% (chance 25%; 2L smeared-key model trained on the task)",
        verdict(p.best_share > 0.5 and p.accuracy > 0.5), "induction-behaviours"))
    return claims

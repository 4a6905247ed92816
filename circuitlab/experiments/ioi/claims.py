"""The IOI paper's claims (Wang et al. 2022), judged on the experiment's typed results.

For any model the claims are class-level (a class exists, found by path patching and attention/copy scores);
for GPT-2 small the paper's head numbers are judged too. Every circuit claim is judged only on a model that does
the task (otherwise "not reproduced", with the reason): on a model that does not, path patching measures noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuitlab.experiments.claims import Claim, verdict
from circuitlab.heads import Head

if TYPE_CHECKING:
    from circuitlab.experiments.ioi.results import IOIResults

PAPER = "Wang et al. 2022"
# GPT-2 small (section 3, Figure 2): the circuit's 26 heads by class (main heads first; in brackets the paper's
# weaker members).
PAPER_HEADS = {
    "name mover": ["9.9", "9.6", "10.0"],
    "negative name mover": ["10.7", "11.10"],
    "S-inhibition": ["7.3", "7.9", "8.6", "8.10"],
    "induction": ["5.5", "6.9"],
    "duplicate-token": ["0.1", "3.0"],
    "previous-token": ["2.2", "4.11"],
}
PAPER_BACKUP = ["9.0", "9.7", "10.1", "10.2", "10.6", "10.10", "11.2", "11.9"]
PAPER_LOGIT_DIFF, PAPER_IO_ABOVE_S, PAPER_IO_PROB = 3.56, 0.993, 0.49
# The model does the task: IO above S on at least 90% of the prompts (GPT-2 small: 99.3%).
DOES_IOI = 0.9
# p_ABC carries no IO information: its logit difference of the same answers is within 25% of the clean one's size.
ABC_LEFT = 0.25
# A class copies names: its mean copy score is at least 50% (the paper: > 95% for the name movers).
COPIES = 0.5
# Faithful: the circuit alone keeps more than half the model's logit difference (the paper: 87%), and more than
# a random set of as many heads keeps.
FAITHFUL = 0.5
# Complete for classes and random K: incompleteness at most 30% of F(M) (the paper's Figure 6: class and random K
# points lie under ~1.0 of F(M) = 3.56, ~28%); the paper's greedy search finds K up to 3.09 (87%): above 30% is
# "a greedy K breaks completeness".
COMPLETE = 0.3
# Minimal: every head moves F by at least 1% of F(M) for some K (section 4).
MINIMAL = 0.01


def _heads(hs) -> str:
    """"head 24.4", "heads 23.0, 23.2, 23.7" or "none": named so that `seeds.spread` keeps heads as names, never as
    numbers to range over seeds (it ranges "0.15" and "0.20", but lists "head 19.1" and "head 19.2" per seed)."""
    names = [h if isinstance(h, str) else str(Head(*h)) for h in hs]
    return f"head{'s' if len(names) > 1 else ''} {', '.join(names)}" if names else "none"


def _set(hs) -> str:
    """A set of heads K in set notation, "{16.0, 24.4, 29.0}" (`seeds.spread` reads braces as names too)."""
    return "{" + ", ".join(h if isinstance(h, str) else str(Head(*h)) for h in hs) + "}"


def ioi_claims(r: "IOIResults") -> list[Claim]:
    b, c, ev = r.behaviour, r.classes, r.evaluation
    does = b.io_above_s >= DOES_IOI and b.logit_diff > 0
    gate = "" if does else f" — judged only on a model that does IOI (IO > S on ≥ {DOES_IOI:.0%}): this one does not"
    claims = [Claim(PAPER, "The model does indirect-object identification: logit(IO) > logit(S) at the end",
                    f"IO > S on ≥ {DOES_IOI:.0%} of prompts (GPT-2 small: logit difference {PAPER_LOGIT_DIFF}, "
                    f"IO > S on {PAPER_IO_ABOVE_S:.1%}, IO probability {PAPER_IO_PROB:.0%})",
                    f"logit difference {b.logit_diff:.2f} ± {b.logit_diff_std:.2f}, IO > S on {b.io_above_s:.1%}, "
                    f"IO probability {b.io_probability:.1%} ({b.n} prompts)", verdict(does), "ioi-behaviour")]
    left = abs(b.corrupted_logit_diff) / abs(b.logit_diff) if b.logit_diff else float("inf")
    claims.append(Claim(PAPER, "p_ABC (three unrelated names) removes the preference for IO",
                        f"|logit difference| on p_ABC ≤ {ABC_LEFT:.0%} of the clean one",
                        f"{b.corrupted_logit_diff:.2f} vs {b.logit_diff:.2f} ({left:.0%})" + gate,
                        verdict(does and left <= ABC_LEFT), "ioi-behaviour"))

    def copy(cls: str) -> float | None:
        s = [r.copy[str(Head(*h))] for h in c.get(cls, []) if str(Head(*h)) in r.copy]
        return sum(s) / len(s) if s else None

    nm, nnm = copy("name mover"), copy("negative name mover")
    claims.append(Claim(PAPER, "Name movers: heads whose direct path to the logits carries the logit difference "
                        "attend from END to IO and copy it", "found by path patching to the logits; attend END→IO; "
                        f"copy score ≥ {COPIES:.0%} (GPT-2: 9.9, 9.6, 10.0; attention ~0.59, copy > 95%)",
                        f"{_heads(c.get('name mover', []))}" + (f"; copy score {nm:.0%}" if nm is not None else "")
                        + gate, verdict(does and nm is not None and nm >= COPIES), "ioi-circuit"))
    claims.append(Claim(PAPER, "Negative name movers attend to IO and write against it",
                        f"path patching to the logits raises the logit difference; negative copy score ≥ {COPIES:.0%} "
                        "(GPT-2: 10.7, 11.10)",
                        f"{_heads(c.get('negative name mover', []))}" + (f"; negative copy score {nnm:.0%}"
                                                                         if nnm is not None else "") + gate,
                        verdict(does and nnm is not None and nnm >= COPIES), "ioi-circuit"))
    found = lambda cls: bool(c.get(cls))  # noqa: E731
    claims.append(Claim(PAPER, "S-inhibition heads act on the name movers' queries and attend from END to S2",
                        "found by path patching into the name movers' queries at END; attend END→S2 more than "
                        "END→IO (GPT-2: 7.3, 7.9, 8.6, 8.10)", _heads(c.get("S-inhibition", [])) + gate,
                        verdict(does and found("S-inhibition")), "ioi-circuit"))
    claims.append(Claim(PAPER, "Induction and duplicate-token heads feed the S-inhibition heads' values",
                        "found by path patching into the S-inhibition heads' values at S2; induction heads attend "
                        "S2→S1+1, duplicate-token heads S2→S1 (GPT-2: 5.5, 6.9; 0.1, 3.0)",
                        f"induction {_heads(c.get('induction', []))}; duplicate-token "
                        f"{_heads(c.get('duplicate-token', []))}" + gate,
                        verdict(does and found("induction") and found("duplicate-token")), "ioi-circuit"))
    claims.append(Claim(PAPER, "Previous-token heads feed the induction heads' keys",
                        "found by path patching into the induction heads' keys at S1+1; attend S1+1→S1 "
                        "(GPT-2: 2.2, 4.11)", _heads(c.get("previous-token", [])) + gate,
                        verdict(does and found("previous-token")), "ioi-circuit"))
    circuit = r.circuit
    share = ev.F_C.get("mean", 0.0) / ev.F_M if ev.F_M else 0.0
    claims.append(Claim(PAPER, "Faithfulness: the circuit alone does the task",
                        f"F(C) ≥ {FAITHFUL:.0%} of F(M), above a random set of as many heads (GPT-2: F(C) keeps 87%, "
                        "|F(M) − F(C)| = 0.46; everything outside C mean-ablated over p_ABC per template)",
                        f"{len(circuit)} heads ({len(c.get('other', []))} of them unnamed): F(M) {ev.F_M:.2f}, F(C) {ev.F_C.get('mean', 0.0):.2f} ({share:.0%}); "
                        f"a random set of {len(ev.random_heads)} heads: F {ev.F_random.get('mean', 0.0):.2f}; F(C) with resample "
                        f"ablation {ev.F_C.get('resample', 0.0):.2f}, zero ablation {ev.F_C.get('zero', 0.0):.2f}"
                        + gate, verdict(does and bool(circuit) and share >= FAITHFUL
                                        and ev.F_C.get("mean", 0.0) > ev.F_random.get("mean", 0.0)), "ioi-evaluation"))
    soft = [x for x in ev.incompleteness if x.how.startswith(("random", "class"))]
    worst = max(soft, key=lambda x: x.score) if soft else None
    claims.append(Claim(PAPER, "Completeness for whole classes and random subsets: knocking them out hurts the "
                        "circuit as much as the model", f"|F(C \\ K) − F(M \\ K)| ≤ {COMPLETE:.0%} of F(M) for every "
                        "class and random K (GPT-2: small for these K)",
                        (f"largest {worst.score:.2f} ({worst.how}: {_set(worst.K)}) of {len(soft)} K"
                         if worst else "not measured") + gate,
                        verdict(does and worst is not None and worst.score <= COMPLETE * abs(ev.F_M)),
                        "ioi-evaluation"))
    g = ev.greedy()
    claims.append(Claim(PAPER, "A greedy search finds a K that breaks completeness (the circuit is incomplete)",
                        f"greedy incompleteness > {COMPLETE:.0%} of F(M) (GPT-2: up to 3.09 of 3.56)",
                        (f"{g.score:.2f} ({100 * g.score / abs(ev.F_M):.0f}% of F(M)) with K = {_set(g.K)}"
                         if g and ev.F_M else "not measured") + gate,
                        verdict(does and g is not None and g.score > COMPLETE * abs(ev.F_M)), "ioi-evaluation"))
    weakest = min(ev.minimality.items(), key=lambda kv: kv[1]) if ev.minimality else None
    claims.append(Claim(PAPER, "Minimality: every head of the circuit matters for some K",
                        f"|F(C \\ (K ∪ {{v}})) − F(C \\ K)| ≥ {MINIMAL:.0%} of F(M) for each head v",
                        (f"weakest head {weakest[0]}: {weakest[1]:.3f} ({100 * weakest[1] / abs(ev.F_M):.1f}% of F(M)); "
                         f"{len(ev.minimality)} heads" if weakest and ev.F_M else "not measured") + gate,
                        verdict(does and weakest is not None and weakest[1] >= MINIMAL * abs(ev.F_M)),
                        "ioi-evaluation"))
    if r.gpt2_small:
        claims += _gpt2_claims(r, gate, does)
    return claims


def _gpt2_claims(r: "IOIResults", gate: str, does: bool) -> list[Claim]:
    """GPT-2 small: each class's heads against the paper's. 'reproduced' when at least half of the paper's heads of
    the class are found in it, 'differs' when the class has other heads, 'not reproduced' when it is empty."""
    out = []
    for cls, paper in PAPER_HEADS.items():
        got = [str(Head(*h)) for h in r.classes.get(cls, [])]
        shared = [h for h in paper if h in got]
        v = ("reproduced" if 2 * len(shared) >= len(paper) else "differs" if got else "not reproduced") if does \
            else "not reproduced"
        out.append(Claim(PAPER, f"GPT-2 small's {cls} heads", ", ".join(paper),
                         f"{_heads(got)} (shared: {_heads(shared)})" + gate, v,
                         "ioi-circuit"))
    return out

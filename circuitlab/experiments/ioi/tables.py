"""Console summary of the IOI experiment."""

from __future__ import annotations

from circuitlab.experiments.ioi.results import IOIResults
from circuitlab.report.terminal import console, new_table, print_claims


def print_ioi(r: IOIResults) -> None:
    b = r.behaviour
    console.print(f"{r.model}: logit difference {b.logit_diff:.2f}, IO > S on {b.io_above_s:.1%}, IO probability "
                  f"{b.io_probability:.1%}; p_ABC {b.corrupted_logit_diff:.2f} ({b.n} prompts; "
                  f"{r.vocabulary['names']} single-token names)", highlight=False)
    t = new_table("Head classes (path patching + attention / copy scores)", ["class", "heads"])
    for c, heads in r.classes.items():
        t.add_row(c, ", ".join(map(str, heads)) or "—")
    console.print(t)
    ev = r.evaluation
    t = new_table("Circuit evaluation", ["", "mean (p_ABC)", "resample", "zero"])
    t.add_row("F(M)", *[f"{ev.F_M:.2f}"] * 3)
    t.add_row("F(C)", *(f"{ev.F_C.get(k, float('nan')):.2f}" for k in ("mean", "resample", "zero")))
    t.add_row("F(random)", *(f"{ev.F_random.get(k, float('nan')):.2f}" for k in ("mean", "resample", "zero")))
    console.print(t)
    print_claims(r.claims)

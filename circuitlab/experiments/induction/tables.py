"""Console summary of the induction experiment."""

from __future__ import annotations

from circuitlab.experiments.induction.results import InductionResults
from circuitlab.report.terminal import console, print_claims


def print_induction(r: InductionResults) -> None:
    console.print(f"preset {r.preset}: " + "; ".join(r.differs_from_paper), highlight=False)
    print_claims(r.claims)
    s = r.seconds
    console.print(f"{s['train_and_measure']:.0f} s training and measuring, {s['analysis']:.0f} s analysis",
                  highlight=False)
    if s.get("per_model_measuring"):
        console.print("measuring checkpoints: " + ", ".join(f"{n} {v:.0f} s" for n, v in s["per_model_measuring"].items())
                      + "; analysis: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s"
                                                   for k, v in s.get("analysis_parts", {}).items()), highlight=False)

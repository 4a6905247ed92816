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

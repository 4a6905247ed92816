"""Console summary of the grokking experiment."""

from __future__ import annotations

from circuitlab.experiments.grokking.claims import PAPER_KEY_FREQUENCIES, PAPER_PHASES
from circuitlab.experiments.grokking.results import GrokkingResults
from circuitlab.report.terminal import console, print_claims


def print_grokking(r: GrokkingResults) -> None:
    ph = r.phases
    console.print(f"key frequencies {r.key_frequencies} (paper, seed 0: {PAPER_KEY_FREQUENCIES}); phases "
                  f"memorised {ph.memorised} / cleanup {ph.cleanup} / grokked {ph.grokked} (paper: "
                  + " / ".join(str(v) for v in PAPER_PHASES.values()) + ")", highlight=False)
    print_claims(r.claims)

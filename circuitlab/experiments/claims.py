"""A claim of a paper checked against a measurement: what the report's claims table shows."""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.results import Result


@dataclass
class Claim(Result):
    """paper: short citation; claim: the paper's statement; expected: the paper's value or the criterion we check;
    measured: our value, with how it was measured; verdict: 'reproduced', 'not reproduced' or 'differs' (a number
    that differs from the paper's where matching it is not required); section: the report section that shows it."""

    paper: str
    claim: str
    expected: str
    measured: str
    verdict: str
    section: str = ""


def verdict(ok: bool) -> str:
    return "reproduced" if ok else "not reproduced"

"""Terminal helpers shared by every experiment's console tables: the consoles, the claims table, number format."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

VERDICT_COLOUR = {"reproduced": "green", "not reproduced": "red"}


def fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def new_table(title: str, columns: list[str], **kw) -> Table:
    t = Table(title=title, title_justify="left", **kw)
    for c in columns:
        t.add_column(c)
    return t


def print_claims(claims) -> None:
    """Claims (objects with claim/expected/measured/verdict) as a table with coloured verdicts."""
    t = new_table("Claims", ["claim", "expected", "measured", "verdict"])
    for c in claims:
        t.add_row(c.claim, c.expected, c.measured, f"[{VERDICT_COLOUR.get(c.verdict, 'yellow')}]{c.verdict}[/]")
    console.print(t)

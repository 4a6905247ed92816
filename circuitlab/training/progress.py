"""The one progress display for training: a rich bar with rate, latest metrics and ETA. Evaluation rows are
printed above it, at most one every few seconds (a grokking run evaluates every 10 epochs)."""

from __future__ import annotations

import time

QUIET_KEYS = {"step", "tokens", "lr", "tokens_per_s", "mfu", "epoch"}


def format_row(row: dict) -> str:
    """'train 2.31  heldout_loss 2.40 ...': the row's metrics, accuracies as percentages."""
    parts = []
    for k, v in row.items():
        if k in QUIET_KEYS or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        parts.append(f"{k} {v:.1%}" if k.endswith(("acc", "accuracy")) else f"{k} {v:.4g}")
    return "  ".join(parts)


class TrainProgress:
    def __init__(self, label: str, total: int, start: int, tokens_per_step: int, print_every_s: float = 5.0):
        from rich.progress import (
            BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
        )

        self.tokens_per_step, self.print_every_s = tokens_per_step, print_every_s
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TextColumn("{task.fields[rate]} steps/s"), TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        )
        self.task = self.progress.add_task(label, total=total, completed=start, rate="-", loss="-")
        self.progress.start()
        self.t0, self.n, self.printed = time.perf_counter(), 0, -float("inf")

    def advance(self, loss: float) -> None:
        self.n += 1
        rate = self.n / max(1e-9, time.perf_counter() - self.t0)
        self.progress.update(self.task, advance=1, rate=f"{rate:,.1f}", loss=f"{loss:.3g}")

    def note(self, row: dict) -> None:
        now = time.perf_counter()
        if now - self.printed < self.print_every_s:
            return
        self.printed = now
        speed = f"  {row['tokens_per_s']:,.0f} tok/s" if row.get("tokens_per_s") else ""
        mfu = f"  MFU {row['mfu']:.1%}" if row.get("mfu") is not None else ""
        self.progress.console.print(f"step {row['step']:>7}  tokens {row['tokens']:>11,}  {format_row(row)}"
                                    f"  lr {row['lr']:.2e}{speed}{mfu}", highlight=False)

    def stop(self) -> None:
        self.progress.stop()

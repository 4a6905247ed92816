"""Training until the phase change has settled (Olsson et al. 2022 train for a fixed 10B tokens; a fixed budget
here would be calibrated to one corpus): every checkpoint is measured as training reaches it, and

- a model that *settles* stops once its best induction score has made its rise and stayed up
  (`induction.phase.settled`), its token budget being the cap;
- a model that *follows* another (the 1L control follows the 2L: the loss bump compares their training losses over
  the same tokens) stops where that one stopped, and never trains past what that one has measured, so where it
  stops does not depend on which process is faster.

Both are decided from the measurements alone, so the same command stops at the same step every time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.heads import INDUCTION
from circuitlab.induction.measure import Probe, measure_checkpoint, read_measurements
from circuitlab.induction.phase import settled
from circuitlab.training.checkpoints import checkpoint_path, list_checkpoints, load_checkpoint
from circuitlab.training.loop import EvalContext
from circuitlab.training.run import Run

FAILED_NAME = "failed"  # written into a run directory when its worker fails, so a follower stops waiting
# A follower gives up when the run it follows has measured nothing new for this long.
WAIT_SECONDS = 30 * 60


class MeasureAsTraining:
    """An evaluation callback: measures the checkpoints saved so far (appending to `path`, which `measure_run`
    then finds done) and stops the run by its rule: `settle=True`, or `follow=` the run directory it follows."""

    def __init__(self, probe: Probe, path: Path, settle: bool = False, follow: Path | None = None,
                 poll_seconds: float = 1.0, wait_seconds: float = WAIT_SECONDS):
        self.probe, self.path, self.settle, self.follow = probe, Path(path), settle, follow
        self.poll, self.wait = poll_seconds, wait_seconds
        self.done: dict | None = None  # the rows measured so far, read from `path` once

    def __call__(self, ctx: EvalContext) -> None:
        if self.done is None:
            self.done = read_measurements(self.path)
        done = self.done
        todo = [s for s in list_checkpoints(ctx.run_dir) if s <= ctx.step and s not in done]
        if todo:
            cfg = Run.open(ctx.run_dir).config
            per_step = ctx.tokens // max(ctx.step, 1)
            with self.path.open("a") as f:
                for s in todo:
                    m = measure_checkpoint(load_checkpoint(checkpoint_path(ctx.run_dir, s), cfg)[0], self.probe, s,
                                           s * per_step)
                    f.write(json.dumps(m.to_json()) + "\n")
                    f.flush()
                    done[s] = m
        if self.settle:
            rows = [done[s] for s in sorted(done) if s <= ctx.step]
            if rows and rows[-1].best_induction is not None:
                ctx.stop = settled([r.tokens for r in rows], [r.best_induction for r in rows], INDUCTION)
        if self.follow is not None and ctx.stop is None:
            ctx.stop = self._follow(ctx.step)

    def _follow(self, step: int) -> str | None:
        """Wait until the followed run is past `step` (go on), stopped at or before it (stop here), or finished."""
        lead = self.follow
        last_seen, since = None, time.monotonic()
        while True:
            if (lead / FAILED_NAME).exists():
                raise CircuitlabError(f"the run this one follows ({lead}) failed: see its error above")
            if (lead / "run.json").exists():
                run = Run.open(lead)
                stop = run.stopped
                if stop is not None and stop["step"] <= step:
                    return f"stopped with {lead.name} at {stop['tokens']:,} tokens ({stop['reason']})"
                measured = read_measurements(lead / "measurements.jsonl")
                if run.finished or (measured and max(measured) > step):
                    return None
                seen = max(measured, default=-1)
                if seen != last_seen:
                    last_seen, since = seen, time.monotonic()
            if time.monotonic() - since > self.wait:
                raise CircuitlabError(f"the run this one follows ({lead}) measured nothing new for "
                                      f"{self.wait / 60:.0f} minutes: is it still training?")
            time.sleep(self.poll)

"""The grokking stage in a process of its own, beside the induction and circuits stages (`reproduce`).

The grokking step makes 26.0 epochs/s on one thread and 39.8 on two (`benchmarks/grokking_step.py`, session 13's
2-core CPU, oneDNN's products; session 12's: 16.8 and 28.7 with MKL's): a second thread buys 53%, where the other
core doing other work at full speed is worth 100%. So on a machine with two or more cores `reproduce` starts the
grokking stage first, on one thread, and runs the induction and circuits stages on the other cores; when they are
done, the grokking process takes every core (`ThreadsFromFile`) and `reproduce` waits for it, showing its progress.
Only where the step's results do not depend on the thread count (`grokking.run.thread_invariant`, checked first),
so the overlap changes no number. On Intel CPUs that holds through MKL's strict CNR mode (`circuitlab.mkl`, since
session 19; before it, session 18's Xeon ran the stage after the others).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.results import atomic_write_text

LOG_NAME, THREADS_NAME, SPEC_NAME = "background.log", "threads", "background.json"


class BackgroundGrokking:
    """Start the grokking experiment in OUT with `threads` torch threads; `give(n)` changes the count, `wait`
    returns when it is done (raising its error as one line), `stop` ends it (resumable: it checkpoints as it goes)."""

    def __init__(self, preset, out: Path, threads: int = 1):
        from circuitlab.experiments.grokking.run import spec_of

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.threads_file, self.log_path = self.out / THREADS_NAME, self.out / LOG_NAME
        self.started_file = self.threads_file.with_name(THREADS_NAME + ".started")
        self.started_file.unlink(missing_ok=True)
        self.total = preset.models["grokking"].train["max_steps"]
        self.give(threads)
        spec = self.out / SPEC_NAME
        atomic_write_text(spec, json.dumps(spec_of(preset, self.out, self.threads_file), indent=1))
        self.t0 = time.perf_counter()
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "circuitlab.experiments.grokking", str(spec)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def give(self, threads: int) -> None:
        atomic_write_text(self.threads_file, f"{threads}\n")

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Until the process has begun training (so the cores it uses count as busy to the stages started next)."""
        t_end = time.monotonic() + timeout_s
        while not self.started_file.exists() and self.proc.poll() is None and time.monotonic() < t_end:
            time.sleep(0.2)

    def epoch(self) -> int:
        """The last epoch the run logged (0 before its first row)."""
        try:
            with (self.out / "run" / "metrics.jsonl").open("rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                lines = f.read().splitlines()
        except OSError:
            return 0
        for line in reversed(lines):  # the first may be cut by the seek, the last half written
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
        return 0

    def wait(self, progress: bool = True) -> float:
        """Wait until the process ends; returns the seconds since it started. Its failure is a CircuitlabError."""
        if progress and self.proc.poll() is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.progress import TimeRemainingColumn

            cols = [TextColumn("grokking (background)"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
            with Progress(*cols, refresh_per_second=2) as bar:
                task = bar.add_task("grokking", total=self.total, completed=self.epoch())
                while self.proc.poll() is None:
                    bar.update(task, completed=self.epoch())
                    time.sleep(1.0)
                bar.update(task, completed=self.epoch())
        rc = self.proc.wait()
        if rc != 0:
            lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
            last = next((x for x in reversed(lines) if x.startswith("error: ")), lines[-1] if lines else "")
            raise CircuitlabError(f"the grokking stage failed in its own process (exit status {rc}): "
                                  f"{last.removeprefix('error: ')} (its output: {self.log_path})")
        return time.perf_counter() - self.t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

"""How many torch threads to run: the cores this process may use that other processes are not using.

Two processes that each run one torch thread per core on the same cores slow down far more than twofold (OpenMP's
threads wait on each other): on a 2-core machine, the grokking stage fell from 15 to 1-3 epochs/s beside another
CPU-heavy process. So each command samples, for a fraction of a second, how busy the cores are (Linux: /proc/stat
less this process's own time), and runs on the rest. CIRCUITLAB_THREADS=N overrides it."""

from __future__ import annotations

import os
import time

from circuitlab.errors import CircuitlabError

ENV = "CIRCUITLAB_THREADS"


def cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, a container's cpuset), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_jiffies() -> int | None:
    try:
        fields = open("/proc/stat").readline().split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return user + nice + system + irq + softirq + steal
    except (OSError, ValueError):
        return None


def _own_jiffies() -> int | None:
    try:
        stat = open("/proc/self/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])  # utime + stime of every thread of this process
    except (OSError, ValueError, IndexError):
        return None


def busy_elsewhere(sample_s: float = 0.3) -> float:
    """Cores' worth of CPU that other processes used over `sample_s` seconds (0 where it cannot be measured).
    Counted machine-wide, so with an affinity mask it is an upper bound for the cores this process may use."""
    b0, s0 = _busy_jiffies(), _own_jiffies()
    if b0 is None or s0 is None:
        return 0.0
    t0 = time.monotonic()
    time.sleep(sample_s)
    b1, s1, dt = _busy_jiffies(), _own_jiffies(), time.monotonic() - t0
    if b1 is None or s1 is None or dt <= 0:
        return 0.0
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, ((b1 - b0) - (s1 - s0)) / hz / dt)


def free_cores(sample_s: float = 0.3) -> int:
    """The cores not busy with other work, at least 1."""
    n = cores()
    return max(1, min(n, n - round(busy_elsewhere(sample_s))))


def threads_for(workers: int = 1, sample_s: float = 0.3) -> int:
    """torch threads for each of `workers` processes: CIRCUITLAB_THREADS if set, else the free cores shared out."""
    given = os.environ.get(ENV)
    if given is not None:
        try:
            n = int(given)
        except ValueError:
            n = 0
        if n < 1:
            raise CircuitlabError(f"{ENV}={given!r}: give a whole number of threads, at least 1")
        return n
    return max(1, free_cores(sample_s) // max(1, workers))


def use_free_cores() -> int:
    """Set torch's thread count to the free cores (or CIRCUITLAB_THREADS) and return it. Under torchrun, each of the
    LOCAL_WORLD_SIZE ranks on this machine takes its share. (Silent: stderr is for errors; `circuitlab train`
    prints the count in its first line.)"""
    import torch

    n = threads_for(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    torch.set_num_threads(n)
    return n


class ThreadsFromFile:
    """An evaluation callback (`train(callbacks=[...])`) that sets torch's thread count to the number in `path`
    whenever another process rewrites it, so a run that shares the cores with other work can take them all once that
    work is done (`reproduce` runs the grokking stage so). When the switch happens changes nothing only where the
    step's results do not depend on the thread count: that holds for the grokking step on the machines it was tested
    on (the same weights with the count switched mid-run), but torch's kernels may split work by thread count, so
    `reproduce` checks it on the machine first (`experiments.grokking.run.thread_invariant`) and uses this callback
    only where it holds. On its first call it writes `path`.started, to say training has begun."""

    def __init__(self, path):
        from pathlib import Path

        self.path, self.seen = Path(path), None

    def apply(self) -> bool:
        """Set torch's thread count to the number in the file now; False where there is none to read (no file, or
        one half written), and the count is kept."""
        import torch

        try:
            n = int(self.path.read_text().strip())
        except (OSError, ValueError):
            return False
        if n >= 1 and n != torch.get_num_threads():
            torch.set_num_threads(n)
        return n >= 1

    def __call__(self, ctx) -> None:
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and stamp != self.seen and self.apply():
            self.seen = stamp  # only once read: a file caught half written is read again at the next evaluation
        started = self.path.with_name(self.path.name + ".started")
        if not started.exists():
            started.write_text(f"{ctx.step}\n")
        return None

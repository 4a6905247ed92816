"""A lock on a run directory, held for the whole of any command that writes the run, so two processes never train
into one folder (two `--resume`s into one --out used to leave checkpoints of two trajectories).

The lock is an advisory `flock` on RUN/.lock: the operating system drops it when its holder exits, however it exits,
so a killed run never leaves a stale lock. The file records who holds it (pid, host, command; since: its mtime), for
the error message.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from circuitlab.errors import CircuitlabError

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None


@contextmanager
def run_lock(out: Path | str):
    """Hold RUN/.lock for the block (creating RUN if needed); a second holder gets one clear error naming the first."""
    out = Path(out)
    if fcntl is None:  # pragma: no cover
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                who = json.loads(os.pread(fd, 4096, 0) or b"{}")
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.fstat(fd).st_mtime))
            except (OSError, ValueError):
                who, since = {}, "?"
            holder = (f"pid {who.get('pid')} on {who.get('host')}, since {since}: {who.get('command')}"
                      if who else "another process")
            raise CircuitlabError(f"{out} is in use by another circuitlab process ({holder}): wait for it to finish, "
                                  "or use another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

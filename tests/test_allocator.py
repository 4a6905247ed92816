"""glibc malloc settings of the training loop (`training.allocator`): fewer page faults, the same results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from circuitlab.training import allocator

PROGRAM = r"""
import ctypes, hashlib, json, resource, torch
from circuitlab.training.allocator import keep_freed_memory
applied = keep_freed_memory()
class Mallinfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                  "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
before = libc.mallinfo2().hblkhd
block = torch.empty(4 * 2**20)  # 16 MiB: above glibc's first mmap threshold (128 KiB), under the settings' 32 MiB
mmapped = libc.mallinfo2().hblkhd - before
del block
kept_free = libc.mallinfo2().fordblks
from circuitlab.experiments.grokking import grokking_model
from circuitlab.model import Transformer
from circuitlab.training.loop import make_optimizer
from circuitlab.training.tasks import ModularAdditionTask
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True, warn_only=True)  # as the training loop runs it
preset = grokking_model(); m, t = preset.configs()
task = ModularAdditionTask(**preset.task); task.prepare(m, t, torch.device("cpu"))
net = Transformer(m); opt = make_optimizer(net, t)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    task.loss(net, task.batch(0)).backward(); opt.step(); opt.zero_grad(set_to_none=True)
step(); task.evaluate(net, 0)
step_faults = 0
for _ in range(6):
    f0 = faults(); step(); step_faults += faults() - f0
    metrics = task.evaluate(net, 0)
faults = step_faults / 6
weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
print(json.dumps({"applied": applied, "faults": faults, "weights": weights, "metrics": metrics, "mmapped": mmapped,
                  "kept_free": kept_free}))
"""


def _run(env_extra: dict) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != allocator.ENV} | env_extra
    r = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _glibc_version() -> tuple[int, ...]:
    import os

    try:
        return tuple(int(x) for x in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2])
    except (AttributeError, ValueError, OSError, IndexError):
        return ()


@pytest.mark.skipif(not allocator.glibc() or _glibc_version() < (2, 33), reason="glibc's malloc (mallinfo2: 2.33+)")
def test_kept_memory_keeps_freed_blocks_and_changes_no_result():
    """In a process with the settings and in one with glibc's own (CIRCUITLAB_MALLOC=system): a 16 MiB tensor, the
    process's first, comes from the heap and stays there once freed with the settings, and from a fresh mmap with
    glibc's own (its first threshold is 128 KiB); then six grokking epochs, each a full-batch step and an
    evaluation of all 12,769 pairs, give the same weights and metrics to the bit.

    The page faults are printed, not asserted: session 12 measured ~770 against ~12,200 an epoch with the step of
    then, but since session 22's bagged step glibc's own settings adapt within a few steps (its mmap threshold
    rises as large blocks are freed), and the step's faults read 0-133 against 97-310 over three runs of this
    program without the 16 MiB block (session 23): a count that varies from run to run is for
    `benchmarks/allocator.py`, not a test."""
    kept, system = _run({}), _run({allocator.ENV: "system"})
    print("page faults per training step: kept", kept["faults"], "glibc's own", system["faults"])
    assert kept["applied"] and not system["applied"]
    block = 16 * 2**20
    assert kept["mmapped"] < block <= system["mmapped"], (kept["mmapped"], system["mmapped"])
    assert kept["kept_free"] >= block > system["kept_free"], (kept["kept_free"], system["kept_free"])
    assert kept["weights"] == system["weights"] and kept["metrics"] == system["metrics"]


def test_a_users_own_glibc_setting_wins(monkeypatch):
    """A MALLOC_*_ variable the user set is glibc's own choice: the settings are not applied over it."""
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator.keep_freed_memory() is False

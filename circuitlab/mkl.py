"""MKL's strict CNR mode on Intel CPUs: matrix products whose result does not depend on the thread count.

torch's x86 CPU wheels multiply float32 matrices with MKL (`model.matmul`: on Intel CPUs circuitlab keeps it, where
oneDNN measured 0.53-1.18x its rate). By default MKL splits a product's sums by thread, so the same product on one
thread and on two can differ in the last bit (session 18's Xeon, Ice Lake: `grokking.run.thread_invariant` False),
and `reproduce` could not train the grokking model on one thread beside the induction models and then on both
without changing its results: it ran it after them (three stages 1,304 s there against 636 s on session 13's AMD
CPU, where it overlaps).

MKL's *strict* conditional-numerical-reproducibility mode (Intel oneMKL developer guide, "Reproducibility
Conditions": ?gemm on the AVX2 and AVX-512 code branches gives bitwise the same result whatever the thread count)
is chosen by the environment variable `MKL_CBWR=AUTO,STRICT`, which MKL reads once, at its first call in a process.
So `circuitlab/__init__` calls `use_strict_mode()` before anything it runs multiplies: where the CPU is Intel with
AVX2 and `MKL_CBWR` is unset, it sets it. AMD CPUs are left as they were (MKL's AVX2 code there, oneDNN for the
fast paths' products: already thread-invariant; every value the README quotes from them stays). Set `MKL_CBWR`
yourself (`MKL_CBWR=AUTO`: MKL's default) to choose otherwise; child processes inherit it.

Cost (`benchmarks/mkl_strict.py`, session 19's Xeon): the grokking step 1.01x, the LM step 0.97x, within the
spread of its rounds (36.0k-40.3k tokens/s strict, 36.7k-40.7k default). A process that multiplied with MKL before importing circuitlab keeps MKL's
default mode, while the processes it starts inherit the variable and run in strict mode: import circuitlab before
torch's first product (the command line does), or set MKL_CBWR before Python starts. `reproduce` checks the thread
invariance before it overlaps and says so where it fails (`experiments.reproduce.mkl_hint`).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ENV = "MKL_CBWR"
STRICT = "AUTO,STRICT"


def cpuinfo() -> str:
    """The start of /proc/cpuinfo (its first processors), or "" where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read(65536)
    except OSError:
        return ""


def cpu_flags(text: str | None = None) -> tuple[str, set[str]]:
    """(vendor_id, flags) of the first CPU in /proc/cpuinfo (or the text given); ("", set()) where there is none."""
    vendor, flags = "", set()
    for line in (cpuinfo() if text is None else text).splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return vendor, flags


def is_strict(value: str | None) -> bool:
    """Whether an MKL_CBWR value asks for the strict mode (any branch: `AUTO,STRICT`, `AVX512,STRICT`, ...)."""
    return value is not None and "STRICT" in (part.strip().upper() for part in value.split(","))


def strict_mode_applies(vendor: str, flags: set[str]) -> bool:
    """Whether circuitlab turns the strict mode on for this CPU: Intel, with AVX2 (the branches the mode covers)."""
    return vendor == "GenuineIntel" and "avx2" in flags


def use_strict_mode(environ: MutableMapping[str, str] | None = None, text: str | None = None) -> str | None:
    """Set MKL_CBWR=AUTO,STRICT in `environ` (default os.environ) where `strict_mode_applies` and it is unset;
    returns the value it set, or None where it set nothing."""
    environ = os.environ if environ is None else environ
    if ENV in environ or not strict_mode_applies(*cpu_flags(text)):
        return None
    environ[ENV] = STRICT
    return STRICT

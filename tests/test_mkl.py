"""MKL's strict CNR mode (`circuitlab.mkl`): set on Intel CPUs as circuitlab is imported, nowhere else, never over a
value the user set; where it is set, the grokking step is thread-invariant (what lets `reproduce` overlap it)."""

import os
import subprocess
import sys

import pytest

from circuitlab import mkl

INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\nflags\t\t: fpu sse2 avx avx2 avx512f\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nflags\t\t: fpu sse2 avx avx2 avx512f\n"
OLD_INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx\n"


@pytest.mark.parametrize("text, environ, expected", [
    (INTEL, {}, mkl.STRICT),  # Intel with AVX2: set
    (AMD, {}, None),  # AMD, even with AVX-512: left as it was (oneDNN's products there; the README's values)
    (OLD_INTEL, {}, None),  # no AVX2: the strict mode covers the AVX2 and AVX-512 branches only
    ("", {}, None),  # no /proc/cpuinfo (not Linux)
    (INTEL, {"MKL_CBWR": "AUTO"}, None),  # the user's choice stands
])
def test_the_strict_mode_is_set_on_intel_cpus_only_and_never_over_the_users_value(text, environ, expected):
    before = dict(environ)
    assert mkl.use_strict_mode(environ, text) == expected
    assert environ == (before | {"MKL_CBWR": mkl.STRICT} if expected else before)


@pytest.mark.parametrize("text, expected", [(INTEL, mkl.STRICT), (AMD, None)])
def test_importing_circuitlab_sets_the_mode_from_the_cpu_it_reads(monkeypatch, text, expected):
    """On any machine: `import circuitlab` (re-run here) calls `use_strict_mode` on the CPU it reads (planted)."""
    import importlib

    import circuitlab

    monkeypatch.setattr(mkl, "cpuinfo", lambda: text)
    monkeypatch.setenv("MKL_CBWR", "placeholder")  # recorded, so the variable is restored after the test
    monkeypatch.delenv("MKL_CBWR")
    importlib.reload(circuitlab)
    assert os.environ.get("MKL_CBWR") == expected


def test_is_strict_reads_any_branch():
    assert mkl.is_strict("AUTO,STRICT") and mkl.is_strict("AVX512,STRICT") and mkl.is_strict("avx2, strict")
    assert not mkl.is_strict("AUTO") and not mkl.is_strict(None) and not mkl.is_strict("COMPATIBLE")


def test_cpu_flags_reads_vendor_and_flags_of_the_first_cpu():
    assert mkl.cpu_flags(INTEL + "\n" + AMD) == ("GenuineIntel", {"fpu", "sse2", "avx", "avx2", "avx512f"})


PROGRAM = """
import os
import circuitlab
import torch
from circuitlab.experiments.grokking import grokking_preset
from circuitlab.experiments.grokking.run import thread_invariant
from circuitlab.model import matmul
print(os.environ.get("MKL_CBWR"), thread_invariant(grokking_preset("paper"), 2),
      torch.backends.mkl.is_available() and matmul.backend() == "torch")
"""


def test_importing_circuitlab_sets_the_mode_in_time_for_the_grokking_step_to_be_thread_invariant():
    """In a fresh process without MKL_CBWR: `import circuitlab` sets it exactly where `strict_mode_applies` to this
    CPU, and before MKL's first product: where it is set, the step gives the same bits on 1 and 2 threads (it
    would not if MKL had read the variable before circuitlab set it: MKL reads it once)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "CIRCUITLAB_THREADS")}
    env["OMP_NUM_THREADS"] = "2"
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    value, invariant, mkl_products = done.stdout.split()
    applies = mkl.strict_mode_applies(*mkl.cpu_flags())
    assert value == (mkl.STRICT if applies else "None")
    if applies and mkl_products == "True":  # the guarantee is MKL's: not for a torch built with another BLAS
        assert invariant == "True"


def test_reproduce_says_why_the_overlap_is_off_where_mkl_cbwr_is_the_reason(monkeypatch):
    from circuitlab.experiments import reproduce

    intel, amd = mkl.cpu_flags(INTEL), mkl.cpu_flags(AMD)
    monkeypatch.setattr(mkl, "cpu_flags", lambda text=None: intel)
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    assert "MKL_CBWR=AUTO: unset it" in reproduce.mkl_hint()
    monkeypatch.setenv("MKL_CBWR", "AVX512,STRICT")  # strict, on another branch: the variable came too late
    assert "before it was set" in reproduce.mkl_hint()
    monkeypatch.delenv("MKL_CBWR")
    assert reproduce.mkl_hint() == ""  # unset: no value of the user's to name (import circuitlab would have set it)
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    monkeypatch.setattr(mkl, "cpu_flags", lambda text=None: amd)
    assert reproduce.mkl_hint() == ""

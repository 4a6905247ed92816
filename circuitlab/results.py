"""Typed results: small dataclasses that every analysis and experiment returns, written to JSON and read back.

`to_jsonable` turns a result (nested dataclasses, tensors, arrays, `Head`s) into plain JSON data; `from_jsonable`
rebuilds the typed result from that data using the dataclass's type hints, so code reads `result.heads[0].induction`
instead of `result["heads"][0]["induction"]`. Files are written atomically (temp file + rename), so a crash never
leaves half a file in place of a result.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from circuitlab.errors import CircuitlabError
from circuitlab.heads import Head

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ atomic files


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`, so a crash never leaves a half-written file in its place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporaries(folder: Path) -> list[Path]:
    """Temporary files `atomic_write` left in `folder` (NAME.XXXXXXXX.tmp) when a process was killed mid-write."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.*.tmp") if p.is_file()) if folder.is_dir() else []


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ to JSON


def to_jsonable(x):
    """Plain JSON data: dataclasses become dicts, tensors and arrays nested lists, heads 'L.H', NaN null."""
    if isinstance(x, Head):
        return str(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
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
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return to_jsonable(x.item())
    return x


# ------------------------------------------------------------------------------------------------ from JSON


def _nan_for_none(x):
    if isinstance(x, list):
        return [_nan_for_none(v) for v in x]
    return math.nan if x is None else x


def _build(tp, x):
    """A value of type `tp` from its JSON form."""
    if tp is Any or tp is typing.Any:
        return x
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if x is None:
            return None
        for a in args:  # the first member that fits
            try:
                return _build(a, x)
            except (TypeError, ValueError, KeyError):
                continue
        raise TypeError(f"{x!r} fits none of {tp}")
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return [_build(arg, v) for v in x]
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in x)
        return tuple(_build(a, v) for a, v in zip(args, x)) if args else tuple(x)
    if origin is dict:
        k, v = typing.get_args(tp) or (Any, Any)
        # JSON object keys are strings: numbers are read back from them
        key_of = {int: int, float: float}.get(k, lambda key: _build(k, key))
        return {key_of(key): _build(v, val) for key, val in x.items()}
    if tp is Head:
        return Head.parse(x) if isinstance(x, str) else Head(*x)
    if tp is torch.Tensor:
        return torch.tensor(_nan_for_none(x))
    if tp is float:
        if x is None:
            return math.nan
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise TypeError(f"expected a number, got {x!r}")
        return float(x)
    if tp is int:
        if not isinstance(x, int) or isinstance(x, bool):
            raise TypeError(f"expected an integer, got {x!r}")
        return x
    if tp is str:
        if not isinstance(x, str):
            raise TypeError(f"expected a string, got {x!r}")
        return x
    if tp is bool:
        if not isinstance(x, bool):
            raise TypeError(f"expected true/false, got {x!r}")
        return x
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_jsonable(tp, x)
    return x


def from_jsonable(cls: type[T], data: dict) -> T:
    """The dataclass `cls` rebuilt from `to_jsonable`'s output, field by field from its type hints.
    Unknown keys are an error (a file written by a newer circuitlab); missing keys take the field's default."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise KeyError(f"{cls.__name__} has no fields {unknown}")
    return cls(**{k: _build(hints[k], v) for k, v in data.items()})


class Result:
    """Mixin for result dataclasses: `.to_json()`, `.save(path)`, `Cls.from_json(data)`, `Cls.load(path)`."""

    def to_json(self) -> dict:
        return to_jsonable(self)

    @classmethod
    def from_json(cls: type[T], data: dict) -> T:
        return from_jsonable(cls, data)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls: type[T], path: Path | str) -> T:
        path = Path(path)
        if not path.exists():
            raise CircuitlabError(f"{path} does not exist: run the experiment that writes it first")
        try:
            return from_jsonable(cls, json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CircuitlabError(f"{path} is damaged or from another circuitlab version ({e}): run it again") from None


def strict_config(cls: type[T], d: dict, what: str) -> T:
    """A config dataclass from saved JSON; fields it does not know are one clear error (a newer circuitlab wrote
    them), never silently dropped. The one way every saved config (model, training, task) is reloaded."""
    if not isinstance(d, dict):
        raise CircuitlabError(f"the saved {what} config is not an object: the run's files are damaged")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CircuitlabError(f"{what} config has unknown fields {unknown}: it was written by a newer circuitlab; "
                              "upgrade circuitlab")
    return cls(**d)

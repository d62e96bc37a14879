"""Outputs of a learner's code, written by the kernel and judged in nbgrader's process.

A record is two files, neither of them a pickle (reading a pickle runs code, and the kernel
that wrote it ran the learner's code):

* ``<exercise>.<suite>.json``: the exercise, the suite (``visible`` or ``hidden``), the secret
  the kernel was given, whether collecting failed (and the learner-facing message), calls into
  the reference, and the structure of the outputs;
* ``<exercise>.<suite>.safetensors``: the tensors the structure refers to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT = 1
MAX_TENSOR_BYTES = 64 * 2**20  # a record bigger than this is not an exercise's output


# ---------------------------------------------------------------------------------------------
# Encoding outputs: JSON for structure and numbers, safetensors for tensors
# ---------------------------------------------------------------------------------------------


def encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return {"__float__": repr(value)} if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, tensors), encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"__list__" if isinstance(value, list) else "__tuple__": [encode(v, tensors) for v in value]}
    # Anything else (a NumPy array, a custom object) is recorded by type only: the judge then
    # reports the wrong type, exactly as an in-notebook check would.
    return {"__object__": type(value).__name__}


class _Opaque:
    """Stands in for an output of a type a record cannot hold."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name}>"

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__float__" in value:
            return float(value["__float__"])
        if "__dict__" in value:
            return {decode(k, tensors): decode(v, tensors) for k, v in value["__dict__"]}
        if "__list__" in value:
            return [decode(v, tensors) for v in value["__list__"]]
        if "__tuple__" in value:
            return tuple(decode(v, tensors) for v in value["__tuple__"])
        if "__object__" in value:
            return _Opaque(str(value["__object__"]))
        raise ValueError(f"unknown record entry {sorted(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# Writing (in the kernel) and reading (in nbgrader's process)
# ---------------------------------------------------------------------------------------------


@dataclass
class Record:
    exercise: str
    suite: str
    secret: int
    outputs: list[dict] | None  # None when collecting failed
    message: str = ""  # why collecting failed (the learner's exception, a timeout, ...)
    reference_calls: tuple[str, ...] = ()


def paths(record_dir: Path, exercise: str, suite: str) -> tuple[Path, Path]:
    folder = Path(record_dir)
    return folder / f"{exercise}.{suite}.json", folder / f"{exercise}.{suite}.safetensors"


def write(record_dir: Path, record: Record) -> None:
    json_path, tensor_path = paths(record_dir, record.exercise, record.suite)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = None if record.outputs is None else encode(record.outputs, tensors)
    info = {
        "format": FORMAT,
        "exercise": record.exercise,
        "suite": record.suite,
        "secret": record.secret,
        "failed": record.outputs is None,
        "message": record.message,
        "reference_calls": sorted(set(record.reference_calls)),
        "outputs": structure,
    }
    save_file(tensors, str(tensor_path))
    json_path.write_text(json.dumps(info))


class BadRecord(Exception):
    """A record that is missing, unreadable, or not from this grading run."""


def read(record_dir: Path, exercise: str, suite: str, secret: int) -> Record:
    json_path, tensor_path = paths(record_dir, exercise, suite)
    if not json_path.is_file() or not tensor_path.is_file():
        raise BadRecord("the check did not run to the end (no outputs were recorded)")
    try:
        if tensor_path.stat().st_size > MAX_TENSOR_BYTES:
            raise BadRecord("the recorded outputs are far larger than this exercise's outputs")
        info = json.loads(json_path.read_text())
        if info.get("format") != FORMAT or info.get("exercise") != exercise or info.get("suite") != suite:
            raise BadRecord("the recorded outputs belong to another check")
        if info.get("secret") != secret:
            raise BadRecord("the recorded outputs were not produced by this grading run")
        tensors = load_file(str(tensor_path))
        outputs = None if info["failed"] else decode(info["outputs"], tensors)
        return Record(exercise, suite, secret, outputs, str(info.get("message", "")),
                      tuple(str(c) for c in info.get("reference_calls", [])))
    except BadRecord:
        raise
    except Exception as e:  # anything unreadable: the notebook wrote garbage there
        raise BadRecord(f"the recorded outputs could not be read ({type(e).__name__})") from None

"""Outputs of a learner's code, written by the kernel and judged in nbgrader's process.

A record is one display output of the check cell that produced it (MIME type ``MIME``), never
a file: JSON for the exercise, the suite (``visible`` or ``hidden``), the grader's one-time token
for that check call, whether collecting failed (and the learner-facing message), calls into the
reference, fingerprints of the code that ran, and the structure of the outputs; the tensors as
safetensors bytes (base64). Never a pickle: reading a pickle runs code, and the kernel that
wrote it ran the learner's code.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

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
# The channel: a record is an output of the check cell itself
# ---------------------------------------------------------------------------------------------

# A check cell run by the grader publishes its record as a display output of this MIME type.
# The executing preprocessor takes it out of that cell's outputs the moment the cell finishes,
# so no later cell can rewrite it, add to it or replace it; anything of this type anywhere else
# is a forgery.
MIME = "application/vnd.mechinterp-course.record+json"

# Where records go when there is no IPython kernel to publish them (plain Python, tests).
OUTBOX: list[dict] = []


@dataclass
class Record:
    exercise: str
    suite: str
    token: str  # the grader's token for this one check call (known to nobody before it runs)
    outputs: list[dict] | None  # None when collecting failed
    message: str = ""  # why collecting failed (the learner's exception, a timeout, ...)
    reference_calls: tuple[str, ...] = ()
    executed: tuple[dict, ...] = ()  # fingerprints of the code the learner's answer ran (see .copies)


def to_payload(record: Record) -> dict:
    tensors: dict[str, torch.Tensor] = {}
    structure = None if record.outputs is None else encode(record.outputs, tensors)
    return {
        "format": FORMAT,
        "exercise": record.exercise,
        "suite": record.suite,
        "token": record.token,
        "failed": record.outputs is None,
        "message": record.message,
        "reference_calls": sorted(set(record.reference_calls)),
        "executed": list(record.executed),
        "outputs": structure,
        "tensors": base64.b64encode(save(tensors)).decode("ascii"),
    }


def publish(record: Record) -> None:
    """In the kernel: send ``record`` out as this cell's output (or to OUTBOX outside IPython)."""
    payload = to_payload(record)
    try:
        from IPython import get_ipython
        from IPython.display import publish_display_data

        shell = get_ipython()
    except ImportError:  # pragma: no cover (IPython is a dependency)
        shell = None
    if shell is None or not hasattr(shell, "kernel"):
        OUTBOX.append(payload)
        return
    publish_display_data({MIME: payload, "text/plain": f"<record of {record.exercise} ({record.suite})>"})


class BadRecord(Exception):
    """A record that is missing, unreadable, or not from this check."""


def from_payload(payload: Any, exercise: str, suite: str, token: str) -> Record:
    """In nbgrader's process: the record in ``payload``, if it is the one this check call sent."""
    try:
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise BadRecord("the recorded outputs could not be read")
        if payload.get("exercise") != exercise or payload.get("suite") != suite:
            raise BadRecord("the recorded outputs belong to another check")
        if payload.get("token") != token:
            raise BadRecord("the recorded outputs were not produced by this check")
        raw = base64.b64decode(str(payload.get("tensors", "")), validate=True)
        if len(raw) > MAX_TENSOR_BYTES:
            raise BadRecord("the recorded outputs are far larger than this exercise's outputs")
        tensors = load(raw)
        outputs = None if payload["failed"] else decode(payload["outputs"], tensors)
        executed = tuple(e for e in payload.get("executed", []) if isinstance(e, dict))
        return Record(exercise, suite, token, outputs, str(payload.get("message", "")),
                      tuple(str(c) for c in payload.get("reference_calls", [])), executed)
    except BadRecord:
        raise
    except Exception as e:  # anything unreadable
        raise BadRecord(f"the recorded outputs could not be read ({type(e).__name__})") from None

"""Copies of the course's reference implementations, found by what runs, not by what the source says.

The toolkit that every notebook imports holds the reference solution of each exercise
(``utils.transformer.LayerNorm.forward`` is chapter 1's LayerNorm). A learner can run a copy of
it without naming it anywhere: import a copy of its file, ``exec`` its text, or rebuild its
functions from their code objects (``types.FunctionType(ref.__code__, ...)``). Each copy still
runs the same bytecode.

While a check runs the learner's code in the grading kernel, every code object called is
fingerprinted (:func:`fingerprint`, with ``utils.checks.core.watching``): its bytecode, constants
and the global and attribute names it uses (not its file, its function name or its local
variable names), plus where its lines sit. In nbgrader's process :func:`find_copies` compares
those fingerprints with the references' own. A match counts as a copy when

* the bytecode is identical and so are its line positions (a copied or ``exec``-ed file, a
  rebuilt function): no honest answer reproduces the toolkit's line numbers; or
* the bytecode is identical and the function is substantial (``SUBSTANTIAL`` instructions or
  more): long enough that two people do not write it identically by chance; or
* the function is substantial and its instructions are at least ``NEAR`` alike (a copy with a
  line added or a name changed): a *near copy*.

Short functions written identically in a notebook cell are not flagged: ``return
logits.argmax(-1)`` is what an honest learner writes too. That, and copies disguised beyond
recognition, are what a human reviewer is for (README, "Teaching with this course").
"""

from __future__ import annotations

import dis
import difflib
import hashlib
import inspect
import types
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

SUBSTANTIAL = 40  # instructions
NEAR = 0.9  # similarity of two substantial instruction sequences that makes a near copy
MAX_EXECUTED = 400  # fingerprints a record carries at most


def _const(c: Any) -> str:
    return _hash(c) if isinstance(c, types.CodeType) else repr(c)


@lru_cache(maxsize=4096)
def _hash(code: types.CodeType) -> str:
    consts = tuple(_const(c) for c in code.co_consts)
    return hashlib.sha256(repr((code.co_code, consts, code.co_names, code.co_argcount)).encode()).hexdigest()[:24]


def _ops(code: types.CodeType) -> list[str]:
    out = []
    for ins in dis.get_instructions(code):
        if ins.opcode in dis.hasname or ins.opcode in dis.hasconst:
            arg = ins.argval if not isinstance(ins.argval, types.CodeType) else "<code>"
            out.append(f"{ins.opname} {arg!r}")
        else:  # locals by operation only: renaming or adding a local variable changes nothing
            out.append(ins.opname)
    return out


def fingerprint(code: types.CodeType) -> dict:
    """What the judge needs to recognise ``code``: a JSON-able dict."""
    ops = _ops(code)
    lines = hashlib.sha256(repr((code.co_firstlineno, code.co_linetable)).encode()).hexdigest()[:24]
    fp = {"hash": _hash(code), "lines": lines, "n": len(ops), "name": code.co_qualname
          if hasattr(code, "co_qualname") else code.co_name}
    if len(ops) >= SUBSTANTIAL:
        fp["ops"] = ops
    return fp


def fingerprints(codes: list[types.CodeType]) -> tuple[dict, ...]:
    return tuple(fingerprint(c) for c in codes[:MAX_EXECUTED])


def _all_codes(code: types.CodeType):
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _all_codes(c)


def reference_codes(reference: Any) -> list[types.CodeType]:
    """Every code object of a reference implementation: a function (unwrapped from decorators
    such as ``torch.no_grad()``) and the functions nested in it, or the methods a reference class
    defines in its own module (not ``__init__``, which the notebook provides, nor base classes
    from elsewhere, such as the hook machinery the notebook gives its Transformer)."""
    functions = []
    if inspect.isclass(reference):
        for klass in reference.__mro__:
            if klass.__module__ != reference.__module__:
                continue
            for key, value in vars(klass).items():
                if key != "__init__":
                    functions.append(getattr(value, "__func__", value))
    else:
        functions.append(reference)
    codes = []
    for fn in functions:
        try:
            fn = inspect.unwrap(fn)
        except ValueError:
            pass
        code = getattr(fn, "__code__", None)
        if isinstance(code, types.CodeType):
            codes.extend(_all_codes(code))
    return codes


@dataclass(frozen=True)
class Copy:
    exercise: str  # whose reference was copied
    name: str  # the reference function's qualified name
    how: str  # "copy" (identical) or "near copy"
    executed_as: str  # the name it ran under in the learner's code


@lru_cache(maxsize=1)
def _reference_index() -> tuple[dict[str, list[tuple[str, dict]]], list[tuple[str, dict]]]:
    from utils.checks import exercises

    by_hash: dict[str, list[tuple[str, dict]]] = {}
    substantial: list[tuple[str, dict]] = []
    for ex in exercises():
        for code in reference_codes(ex.reference):
            fp = fingerprint(code)
            by_hash.setdefault(fp["hash"], []).append((ex.name, fp))
            if fp["n"] >= SUBSTANTIAL:
                substantial.append((ex.name, fp))
    return by_hash, substantial


def find_copies(executed: tuple[dict, ...] | list[dict]) -> list[Copy]:
    """The references that the fingerprinted code ``executed`` copies (see the module docstring)."""
    by_hash, substantial = _reference_index()
    found: list[Copy] = []
    for fp in executed:
        if not isinstance(fp, dict):
            continue
        name = str(fp.get("name", "?"))
        matched = False
        for exercise, ref in by_hash.get(fp.get("hash"), []):
            if fp.get("lines") == ref["lines"] or ref["n"] >= SUBSTANTIAL:
                found.append(Copy(exercise, ref["name"], "copy", name))
                matched = True
        if matched or not isinstance(fp.get("ops"), list):
            continue
        ops = [str(o) for o in fp["ops"]]
        for exercise, ref in substantial:
            if abs(len(ops) - ref["n"]) > (1 - NEAR) * ref["n"] * 2:
                continue
            matcher = difflib.SequenceMatcher(None, ops, ref["ops"], autojunk=False)
            if matcher.real_quick_ratio() >= NEAR and matcher.quick_ratio() >= NEAR and matcher.ratio() >= NEAR:
                found.append(Copy(exercise, ref["name"], "near copy", name))
    return sorted(set(found), key=lambda c: (c.exercise, c.name, c.how, c.executed_as))

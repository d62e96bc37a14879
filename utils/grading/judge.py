"""Judging recorded outputs, in nbgrader's process (never in the kernel that ran the learner)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from utils.checks import CheckFailed, get_exercise, judge

from . import record


@dataclass(frozen=True)
class Verdict:
    exercise: str
    suite: str  # "visible" or "hidden"
    passed: bool
    message: str


HIDDEN_FAILED = (
    "✗ {name}: your code passes the visible check but fails the hidden tests (other random inputs"
    " and shapes).\n  Make sure nothing in it depends on the particular sizes or values of the visible"
    " check's inputs (hard-coded shapes, lengths or numbers)."
)
HIDDEN_CRASHED = (
    "✗ {name}: your code raised an error or ran too long on the hidden tests (other random inputs"
    " and shapes), although it passes the visible check.\n  Does it assume a particular batch size,"
    " sequence length or model size?"
)
# When the visible check failed too, "although it passes the visible check" would be false.
HIDDEN_ALSO_FAILED = (
    "✗ {name}: your code fails the hidden tests too (other random inputs and shapes).\n  Fix what"
    " the visible check above says first; the hidden tests check the same thing on other inputs."
)


def checks_in(source: str) -> list[tuple[str, str]]:
    """The ``check("name", ...)`` calls of a (trusted) test cell: [(exercise, suite), ...]."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            hidden = any(k.arg == "hidden" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
            found.append((node.args[0].value, "hidden" if hidden else "visible"))
    return sorted(set(found), key=found.index)


def grade_check(record_dir: Path, name: str, suite: str, secret: int, reference_uses: list[str] = ()) -> Verdict:
    """The verdict on one check, from its recorded outputs alone."""
    if reference_uses:
        where = "; ".join(reference_uses)
        return Verdict(name, suite, False,
                       f"✗ {name}: the notebook uses the course's reference implementation ({where}) instead of"
                       " your own code. No credit for this exercise.")
    try:
        rec = record.read(record_dir, name, suite, secret)
    except record.BadRecord as e:
        return Verdict(name, suite, False, f"✗ {name}: {e}. Did the cells above this check run without errors?")
    if rec.reference_calls:
        return Verdict(name, suite, False,
                       f"✗ {name}: your code calls the course's reference implementation"
                       f" ({', '.join(rec.reference_calls)}) instead of doing the work itself. No credit for this exercise.")
    if rec.outputs is None:
        if suite == "hidden":
            return Verdict(name, suite, False, _hidden_message(HIDDEN_CRASHED, record_dir, name, secret))
        return Verdict(name, suite, False, rec.message)
    exercise = get_exercise(name)
    if suite == "hidden":
        exercise = exercise.hidden_suite(secret)
    try:
        if not isinstance(rec.outputs, list) or len(rec.outputs) != len(exercise.cases):
            raise CheckFailed(f"✗ {name}: the recorded outputs do not match the check's inputs")
        judge(exercise, rec.outputs)
    except CheckFailed as e:
        if suite == "hidden":
            return Verdict(name, suite, False, _hidden_message(HIDDEN_FAILED, record_dir, name, secret))
        return Verdict(name, suite, False, str(e))
    except Exception as e:  # outputs of a shape or type the comparison could not handle
        return Verdict(name, suite, False, f"✗ {name}: your outputs could not be compared with the reference ({type(e).__name__}).")
    what = "hidden tests" if suite == "hidden" else f"{len(exercise.cases)} inputs"
    return Verdict(name, suite, True, f"✓ {name}: {exercise.title} matches the reference on {what}.")


def _hidden_message(template: str, record_dir: Path, name: str, secret: int) -> str:
    """A hidden-test failure's message: ``template`` (which says the visible check passes) only
    when the visible check's own record passes; otherwise say that both fail."""
    visible = grade_check(record_dir, name, "visible", secret)
    return (template if visible.passed else HIDDEN_ALSO_FAILED).format(name=name)

"""Judging recorded outputs, in nbgrader's process (never in the kernel that ran the learner)."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from utils.checks import CheckFailed, get_exercise, judge

from . import copies, record


@dataclass(frozen=True)
class Verdict:
    exercise: str
    suite: str  # "visible" or "hidden"
    passed: bool
    message: str
    review: tuple[str, ...] = ()  # for the instructor's review list, at no cost


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


def tamper_verdict(name: str, suite: str, why: str) -> Verdict:
    return Verdict(name, suite, False, f"✗ {name}: {why}\n  No credit for this check; your instructor has it on a review list.")


def grade_payloads(payloads: list, name: str, suite: str, token: str, seed: int,
                   visible: Verdict | None = None) -> Verdict:
    """The verdict on one check call from the records its cell published: exactly one, carrying
    the call's token, or the check is not credited."""
    mine = [p for p in payloads if isinstance(p, dict) and p.get("exercise") == name and p.get("suite") == suite]
    if not mine:
        return Verdict(name, suite, False, f"✗ {name}: the check did not run to the end (no outputs were recorded)."
                       " Did the cells above this check run without errors?")
    if len(mine) > 1:
        return tamper_verdict(name, suite, f"this check cell sent {len(mine)} sets of outputs for one check;"
                              " only the check itself sends one.")
    try:
        rec = record.from_payload(mine[0], name, suite, token)
    except record.BadRecord as e:
        if "not produced by this check" in str(e):
            return tamper_verdict(name, suite, f"{e} (it does not carry the grader's token for this check).")
        return Verdict(name, suite, False, f"✗ {name}: {e}. Did the cells above this check run without errors?")
    return grade_record(rec, seed, visible)


def grade_record(rec: record.Record, seed: int = 0, visible: Verdict | None = None) -> Verdict:
    """The verdict on one check from its record alone (``seed``: the hidden suite's; ``visible``:
    the verdict of the same exercise's visible check, for the hidden-test message)."""
    name, suite = rec.exercise, rec.suite
    if rec.reference_calls:
        return Verdict(name, suite, False,
                       f"✗ {name}: your code calls the course's reference implementation"
                       f" ({', '.join(rec.reference_calls)}) instead of doing the work itself. No credit for this exercise.")
    found = copies.find_copies(rec.executed)
    exact = [c for c in found if c.how == "copy"]
    if exact:
        what = "; ".join(f"{c.executed_as} is a copy of {c.name} (exercise {c.exercise})" for c in exact[:4])
        return tamper_verdict(name, suite, "your answer runs a copy of the course's reference implementation"
                              f" rather than code you wrote: {what}.")
    # Near copies cost nothing: an honest answer can come close. A human decides.
    review = tuple(f"{c.executed_as} is a near copy of the reference's {c.name} (exercise {c.exercise})"
                   for c in found if c.how == "near copy")
    verdict = _judged(rec, seed, visible)
    return Verdict(verdict.exercise, verdict.suite, verdict.passed, verdict.message, review)


def _judged(rec: record.Record, seed: int, visible: Verdict | None) -> Verdict:
    name, suite = rec.exercise, rec.suite
    if rec.outputs is None:
        if suite == "hidden":
            return Verdict(name, suite, False, _hidden_message(HIDDEN_CRASHED, name, visible))
        return Verdict(name, suite, False, rec.message)
    exercise = get_exercise(name)
    if suite == "hidden":
        exercise = exercise.hidden_suite(seed)
    try:
        if not isinstance(rec.outputs, list) or len(rec.outputs) != len(exercise.cases):
            raise CheckFailed(f"✗ {name}: the recorded outputs do not match the check's inputs")
        judge(exercise, rec.outputs)
    except CheckFailed as e:
        if suite == "hidden":
            return Verdict(name, suite, False, _hidden_message(HIDDEN_FAILED, name, visible))
        return Verdict(name, suite, False, str(e))
    except Exception as e:  # outputs of a shape or type the comparison could not handle
        return Verdict(name, suite, False, f"✗ {name}: your outputs could not be compared with the reference ({type(e).__name__}).")
    what = "hidden tests" if suite == "hidden" else f"{len(exercise.cases)} inputs"
    return Verdict(name, suite, True, f"✓ {name}: {exercise.title} matches the reference on {what}.")


def _hidden_message(template: str, name: str, visible: Verdict | None) -> str:
    """A hidden-test failure's message: ``template`` (which says the visible check passes) only
    when the visible check passed; otherwise say that both fail."""
    return (template if visible is not None and visible.passed else HIDDEN_ALSO_FAILED).format(name=name)

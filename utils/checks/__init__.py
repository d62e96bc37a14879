"""Checks for the course's exercises.

In a notebook::

    from utils.checks import check
    check("layernorm", LayerNorm)   # prints ✓ ... or raises CheckFailed with a hint

``check`` returns None on success, raises ``CheckFailed`` (an ``AssertionError``) on failure and
writes nothing to stderr, so the same call serves as an nbgrader test cell. The exercises
themselves (inputs, reference, catalogued mistakes) live in ``tests/exercises/`` so that CI,
the notebook and nbgrader all run one set of checks.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from .core import CheckFailed, Exercise, LearnerError, Mistake, RunContext, collect, judge

__all__ = ["check", "CheckFailed", "Exercise", "LearnerError", "Mistake", "RunContext", "exercises", "get_exercise", "collect", "judge"]

_REGISTRY: dict[str, Exercise] | None = None


def exercises_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "tests" / "exercises"


def _load_registry() -> dict[str, Exercise]:
    global _REGISTRY
    if _REGISTRY is not None:
        return _REGISTRY
    folder = exercises_dir()
    if not folder.is_dir():
        raise CheckFailed(
            f"The course's exercise checks were not found in {folder}.\n"
            "Install the course from a clone of its repository (pip install -e .), not from a wheel."
        )
    registry: dict[str, Exercise] = {}
    # A private package over tests/exercises, so exercise files can import each other
    # (from .judges import ...) without putting tests/ on sys.path.
    if "_course_exercises" not in sys.modules:
        pkg = types.ModuleType("_course_exercises")
        pkg.__path__ = [str(folder)]
        sys.modules["_course_exercises"] = pkg
    for path in sorted(folder.glob("ch*.py")):
        mod_name = f"_course_exercises.{path.stem}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        for ex in module.EXERCISES:
            if ex.name in registry:
                raise RuntimeError(f"exercise name {ex.name!r} is defined twice")
            ex.chapter = path.stem
            registry[ex.name] = ex
    _REGISTRY = registry
    return registry


def exercises(chapter: str | None = None) -> list[Exercise]:
    """All exercises (of one chapter, e.g. ``"ch01"``), in the order they are declared."""
    return [ex for ex in _load_registry().values() if chapter is None or ex.chapter == chapter]


def get_exercise(name: str) -> Exercise:
    registry = _load_registry()
    if name not in registry:
        close = difflib.get_close_matches(str(name), registry, n=3)
        suggestion = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CheckFailed(
            f"✗ There is no exercise called {name!r}.{suggestion}\n  Exercises: {', '.join(registry)}"
        )
    return registry[name]


def _validate(ex: Exercise, impl: Any) -> None:
    import inspect

    from torch import nn

    if impl is None:
        raise CheckFailed(f"✗ {ex.name}: you passed None. Pass your {ex.title} itself: check({ex.name!r}, {ex.title}).")
    if ex.kind == "class":
        if isinstance(impl, nn.Module):
            raise CheckFailed(
                f"✗ {ex.name}: you passed an instance of {type(impl).__name__}; pass the class itself: "
                f"check({ex.name!r}, {type(impl).__name__})."
            )
        if not (inspect.isclass(impl) and issubclass(impl, nn.Module)):
            raise CheckFailed(
                f"✗ {ex.name}: expected a class that subclasses torch.nn.Module, got {type(impl).__name__} {impl!r}."
            )
    elif not callable(impl):
        raise CheckFailed(f"✗ {ex.name}: expected a function, got {type(impl).__name__} {impl!r}.")
    if impl is ex.reference:
        raise CheckFailed(
            f"✗ {ex.name}: that is the course's reference implementation, not yours. Pass the {ex.title} you wrote."
        )


def check(name: str, impl: Any, hidden: bool = False, _grading: str | None = None) -> None:
    """Check the learner's ``impl`` for exercise ``name``; print ✓ or raise ``CheckFailed``.

    ``hidden=True`` runs the exercise's hidden tests (nbgrader's hidden test region): other
    random inputs and extra shapes.

    ``_grading`` is not for learners: when nbgrader grades a notebook, the grader adds it to
    the check calls of the course's test cells as it runs them (``"<token>:<seed>"``, new for
    every call). The check then only runs ``impl`` and sends its outputs out as this cell's
    output; the judging happens outside the notebook (see ``utils.grading``). While grading,
    a check call without it (one a learner added) does nothing.

    Nothing but ``CheckFailed`` leaves this function: an unexpected error inside the checker
    becomes a verdict that says what to do.
    """
    try:
        return _check(name, impl, hidden, _grading)
    except CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 (the point: a verdict, never a raw traceback)
        raise CheckFailed(
            f"✗ {name}: the check itself could not finish ({type(e).__name__}: {e}).\n"
            "  This is not a verdict on your code. Restart the kernel (Kernel ▸ Restart Kernel), run the\n"
            "  cells above this one again, then this check; if it happens again, please report it."
        ) from None


def _check(name: str, impl: Any, hidden: bool = False, grading_call: str | None = None) -> None:
    from utils import grading

    if grading_call is not None:
        token, _, seed = str(grading_call).partition(":")
        ex = get_exercise(name)
        if hidden:
            ex = ex.hidden_suite(int(seed or 0))
        return _record(ex, impl, "hidden" if hidden else "visible", token)
    if grading.active():
        print(f"({name}: checks you add yourself do not run while the notebook is being graded;"
              " the course's own check cells do.)")
        return None
    ex = get_exercise(name)
    if hidden:
        ex = ex.hidden_suite(0)
    _validate(ex, impl)
    notes: list[str] = []
    outputs = collect(ex, impl, notes=notes)
    notes += judge(ex, outputs) or []
    n = len(ex.cases)
    what = "hidden tests" if hidden else f"input{'s' if n > 1 else ''}"
    print(f"✓ {ex.name}: {ex.title} matches the reference on {n} {what}.")
    for note in notes:
        print(f"  note: {note}")


def _record(ex: Exercise, impl: Any, suite: str, token: str) -> None:
    """Grading mode: run ``impl`` under the usual guards and send its outputs, with the code it
    ran, out as this cell's output for the judge."""
    from utils.grading import copies, record

    calls: list[str] = []
    executed: dict = {}
    try:
        _validate(ex, impl)
        outputs, message = collect(ex, impl, reference_calls=calls, executed=executed), ""
    except CheckFailed as e:
        outputs, message = None, str(e)
    record.publish(record.Record(ex.name, suite, token, outputs, message, tuple(calls),
                                 copies.fingerprints(list(executed.values()))))
    print(f"{ex.name}: outputs recorded for grading.")

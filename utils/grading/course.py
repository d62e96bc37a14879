"""Build an nbgrader course directory from ``solutions/``: ``python -m utils.grading build DIR``.

For every chapter ``solutions/NN_name.ipynb`` it writes ``DIR/source/chNN/NN_name.ipynb``, the
instructor's version of the assignment:

* every check cell gains a hidden-test region, ``check(name, impl, hidden=True)``: the same
  exercise on inputs reseeded for each grading run, plus the exercise's extra hidden shapes;
* the course's own code cells become read-only, so autograding restores them and the reference
  detector knows which code is the learner's;
* points stay as in the chapter (one per check cell; edit the source to change them).

It also writes ``DIR/nbgrader_config.py`` and the grading kernel ``DIR/jupyter/kernels/course-grading``.
New chapters need nothing extra: any ``check("name", X)`` cell gets its hidden tests the same way.
An existing file that differs is left alone (and reported) unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "solutions"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def assignment_name(notebook: Path) -> str:
    return f"ch{notebook.name[:2]}"


def _check_calls(source: str) -> list[str]:
    """Source text of each top-level ``check("name", X)`` call (without hidden=...)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    calls = []
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "check"
                and not any(k.arg == "hidden" for k in call.keywords)):
            calls.append(ast.get_source_segment(source, call))
    return calls


def instructor_notebook(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader")
        if cell.cell_type != "code":
            continue
        if not meta:
            cell.metadata["nbgrader"] = {"grade": False, "grade_id": f"provided_{i:03d}", "locked": True,
                                         "schema_version": 3, "solution": False, "task": False}
            continue
        if meta.get("grade") and not meta.get("solution") and HIDDEN_BEGIN not in cell.source:
            calls = _check_calls(cell.source)
            if calls:
                hidden = "\n".join(f"{c[:-1]}, hidden=True)" for c in calls)
                cell.source = f"{cell.source.rstrip()}\n{HIDDEN_BEGIN}\n{hidden}\n{HIDDEN_END}"
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def kernel_spec() -> dict:
    return {
        "argv": [sys.executable, "-m", "utils.grading.kernel", "-f", "{connection_file}"],
        "display_name": "Python (course grading)",
        "language": "python",
        "metadata": {"debugger": False},
    }


def _write(path: Path, text: str, force: bool, report: list[str]) -> None:
    if path.exists() and path.read_text() != text and not force:
        report.append(f"kept {path} (it differs from what would be written; --force replaces it)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    report.append(f"wrote {path}")


def build(course_dir: Path, chapters: list[str] | None = None, force: bool = False) -> list[str]:
    course_dir = Path(course_dir).resolve()
    report: list[str] = []
    notebooks = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
    if chapters:
        notebooks = [p for p in notebooks if p.name[:2] in chapters or assignment_name(p) in chapters]
    for path in notebooks:
        nb = instructor_notebook(path)
        target = course_dir / "source" / assignment_name(path) / path.name
        _write(target, nbformat.writes(nb) + "\n", force, report)
    _write(course_dir / "nbgrader_config.py", (Path(__file__).parent / "nbgrader_config.py").read_text(), force, report)
    _write(course_dir / "jupyter" / "kernels" / "course-grading" / "kernel.json",
           json.dumps(kernel_spec(), indent=2) + "\n", True, report)
    return report


def nbgrader_env() -> dict:
    """The environment for nbgrader subprocesses: this Python's scripts first on PATH (nbgrader
    calls ``alembic`` by name)."""
    import os

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def autograde(course_dir: Path, assignment: str, students: list[str] | None = None, jobs: int = 1,
              extra: list[str] = ()) -> list[tuple[str, float, int]]:
    """``nbgrader autograde ASSIGNMENT --student S`` for each student, ``jobs`` at a time (each
    kernel runs single-threaded, so one job per core). Returns (student, seconds, exit code)."""
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor

    course_dir = Path(course_dir).resolve()
    if students is None:
        students = sorted(p.parent.name for p in (course_dir / "submitted").glob(f"*/{assignment}") if p.is_dir())

    def one(student: str) -> tuple[str, float, int]:
        start = time.monotonic()
        log = course_dir / "autograde_logs" / f"{assignment}-{student}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "w") as out:
            code = subprocess.call([sys.executable, "-m", "nbgrader", "autograde", assignment, "--student", student,
                                    "--force", *extra], cwd=course_dir, env=nbgrader_env(), stdout=out, stderr=subprocess.STDOUT)
        return student, time.monotonic() - start, code

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, students))


def review_counts(course_dir: Path, assignment: str, student: str) -> tuple[int, int]:
    """(checks not credited, items worth a look at no cost) on a student's review list."""
    path = Path(course_dir) / "autograde_logs" / "review" / assignment / f"{student}.json"
    if not path.is_file():
        return 0, 0
    items = [item for notebook in json.loads(path.read_text()).values() for item in notebook]
    return sum(1 for i in items if i.get("cost")), sum(1 for i in items if not i.get("cost"))


def next_step_hint(course_dir: Path) -> str:
    """What to run next, including activating the environment nbgrader is installed in."""
    activate = Path(sys.prefix) / "bin" / "activate"
    prefix = f"source {shlex.quote(str(activate))} && " if sys.prefix != sys.base_prefix and activate.is_file() else ""
    return (f"Next: {prefix}cd {shlex.quote(str(course_dir))} && nbgrader generate_assignment ch01"
            " (see README, 'Teaching with this course').")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.grading", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write an nbgrader course directory from solutions/")
    b.add_argument("course_dir", type=Path)
    b.add_argument("--chapters", nargs="*", help="e.g. 01 02 (default: all)")
    b.add_argument("--force", action="store_true", help="replace files that differ")
    a = sub.add_parser("autograde", help="run nbgrader autograde for every submission, several at once")
    a.add_argument("assignment")
    a.add_argument("--course-dir", type=Path, default=Path("."))
    a.add_argument("--students", nargs="*")
    a.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="submissions graded at once (default: one per core)")
    args = parser.parse_args(argv)
    if args.command == "autograde":
        results = autograde(args.course_dir, args.assignment, args.students, args.jobs)
        print(f"{'student':20s} {'seconds':>8s}  result")
        for student, seconds, code in results:
            if code != 0:
                status = f"NEEDS ATTENTION: not graded (exit {code}; see autograde_logs/{args.assignment}-{student}.log)"
            else:
                costly, look = review_counts(args.course_dir, args.assignment, student)
                status = "ok" + (f"; review: {costly} check(s) not credited for tampering or copying" if costly else "") \
                    + (f"; {look} item(s) worth a look" if look else "")
            print(f"{student:20s} {seconds:8.1f}  {status}")
        if any(sum(review_counts(args.course_dir, args.assignment, s)) for s, _, c in results if c == 0):
            print(f"\nThe review list of each student: autograde_logs/review/{args.assignment}/<student>.json")
        return 0 if all(code == 0 for _, _, code in results) else 1
    for line in build(args.course_dir, args.chapters, args.force):
        print(line)
    print("\n" + next_step_hint(args.course_dir))
    return 0

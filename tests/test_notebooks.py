"""Execute the chapter notebooks as a learner would (slow: part of the full suite, not --quick).

* solutions/NN_*.ipynb run top to bottom and every check cell prints its ✓;
* chapters/NN_*.ipynb (the learner's copy) stop at the first exercise with the
  "not implemented yet" verdict, not with a crash somewhere else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.slow


def execute(path: Path, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[nbformat.NotebookNode, Exception | None]:
    """Run a copy of the notebook in a fresh kernel (the original is never written); ``env``:
    extra environment variables for the kernel."""
    work = tmp_path / path.parent.name
    work.mkdir(parents=True, exist_ok=True)
    copy = work / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    extra = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)  # the kernel inherits this process's environment
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    try:
        client.execute()
    except CellExecutionError as e:
        return nb, e
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return nb, None


def check_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
    return "".join(parts)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_notebook_passes_every_check(path, tmp_path):
    nb, error = execute(path, tmp_path)
    assert error is None, f"{path.name} raised:\n{error}"
    checks = check_cells(nb)
    assert checks, "a chapter without check cells"
    for cell in checks:
        out = text_of(cell)
        assert out.startswith("✓"), f"{cell.source!r} printed {out!r}"
        stderr = [o for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]
        assert not stderr, f"{cell.source!r} wrote to stderr (nbgrader would score it 0)"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_chapter_notebook_stops_at_first_exercise(path, tmp_path):
    chapter = ROOT / "chapters" / path.name
    assert chapter.exists(), f"{chapter} is missing: run ./course build"
    # Demonstrations before the first exercise (chapter 2 trains two models) run a few steps
    # only: this test is about where the learner's copy stops, the solutions run them whole.
    nb, error = execute(chapter, tmp_path, env={"COURSE_DEMO_STEPS": "20"})
    assert error is not None, "the learner's notebook ran to the end with no exercise done"
    failed = next(c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.get("outputs", [])))
    first_check = check_cells(nb)[0]
    assert failed is first_check, f"the first error came from {failed.source[:80]!r}, not the first check"
    message = text_of(failed)
    assert "not implemented yet" in message, message
    assert "Traceback" not in message and "core.py" not in message, "the verdict should not show checker internals"

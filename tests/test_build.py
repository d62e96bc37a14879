"""Tests of utils/build.py: solutions/*.ipynb -> chapters/*.ipynb with nbgrader's preprocessors."""

from __future__ import annotations

import os

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat import v4

from utils import build

FIXTURE = Path(__file__).parent / "fixtures" / "build" / "01_fixture.ipynb"
NAME = FIXTURE.name


@pytest.fixture
def dirs(tmp_path):
    """(src, out) directories under tmp_path, src holding a copy of the fixture notebook."""
    src = tmp_path / "solutions"
    src.mkdir()
    shutil.copy(FIXTURE, src / NAME)
    return src, tmp_path / "chapters"


def run(src, out, *args):
    return build.main(["--src", str(src), "--out", str(out), *args])


def by_id(nb, grade_id):
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    return cell


def write_variant(src, edit, name=NAME):
    """Copy the fixture into src/name after applying edit(nb) to it."""
    nb = nbformat.read(FIXTURE, as_version=4)
    edit(nb)
    path = src / name
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return path


# --- what a chapter contains -------------------------------------------------------------


def test_solution_is_replaced_by_stub():
    nb = build.build_notebook(FIXTURE)
    text = json.dumps(nb)
    assert "return 2 * x" not in text
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    cell = by_id(nb, "double")
    assert cell.source == (
        'def double(x):\n    """Return 2 * x."""\n    # YOUR CODE HERE\n    raise NotImplementedError()'
    )
    assert cell.metadata.nbgrader["solution"] is True
    assert cell.metadata.deletable is False


def test_check_cell_is_kept_verbatim_with_its_nbgrader_metadata():
    src = nbformat.read(FIXTURE, as_version=4)
    nb = build.build_notebook(FIXTURE)
    before, after = by_id(src, "check_double"), by_id(nb, "check_double")
    assert after.source == before.source
    assert after.id == before.id
    # nbgrader metadata kept (plus the checksum nbgrader computes), so autograding works
    assert before.metadata.nbgrader.items() <= after.metadata.nbgrader.items()
    assert after.metadata.nbgrader["checksum"]
    assert after.metadata.deletable is False and after.metadata.editable is False
    assert [c.source for c in nb.cells if c.cell_type == "markdown"] == [
        c.source for c in src.cells if c.cell_type == "markdown"
    ]


def test_hidden_tests_are_removed():
    cell = by_id(build.build_notebook(FIXTURE), "check_double_hidden")
    assert cell.source == "assert double(1) == 2"


def test_no_outputs_and_noise_metadata_stripped(dirs):
    src, _ = dirs

    def noisy(nb):
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
        nb.metadata["celltoolbar"] = "Create Assignment"
        nb.metadata.language_info["version"] = "3.11.9"
        for cell in nb.cells:
            cell.metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00Z"}
            cell.metadata["collapsed"] = False
            cell.metadata["scrolled"] = True
            cell.metadata["tags"] = ["keep-me"]

    nb = build.build_notebook(write_variant(src, noisy))
    for cell in nb.cells:
        assert set(cell.metadata) <= {"nbgrader", "deletable", "editable", "tags"}
        assert cell.metadata.tags == ["keep-me"]
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert set(nb.metadata) == {"kernelspec", "language_info", "course"}
    assert "version" not in nb.metadata.language_info
    assert nb.metadata.course["generated_from"] == f"solutions/{NAME}"
    assert nb.metadata.course["do_not_edit"] is True


# --- writing -----------------------------------------------------------------------------


def test_build_is_deterministic_and_leaves_sources_alone(dirs):
    src, out = dirs
    source_bytes = (src / NAME).read_bytes()
    assert run(src, out) == 0
    first = (out / NAME).read_bytes()
    assert first.endswith(b"}\n") and first.startswith(b'{\n "cells": [\n  {\n')
    (out / NAME).unlink()
    assert run(src, out) == 0
    assert (out / NAME).read_bytes() == first
    assert run(src, out) == 0  # up to date: not rewritten
    assert (out / NAME).read_bytes() == first
    assert build.render_notebook(src / NAME, generated_from=f"solutions/{NAME}").encode() == first
    assert (src / NAME).read_bytes() == source_bytes
    # nothing else written anywhere (no temp files left behind)
    assert sorted(p.name for p in out.iterdir()) == [NAME]
    assert sorted(p.name for p in src.iterdir()) == [NAME]


def test_names_select_notebooks(dirs):
    src, out = dirs
    shutil.copy(FIXTURE, src / "02_other.ipynb")
    assert run(src, out, "02_other") == 0
    assert sorted(p.name for p in out.iterdir()) == ["02_other.ipynb"]
    assert run(src, out, str(src / NAME)) == 0
    assert sorted(p.name for p in out.iterdir()) == [NAME, "02_other.ipynb"]


def test_refuses_to_overwrite_a_file_it_did_not_generate(dirs, capsys):
    src, out = dirs
    out.mkdir()
    mine = nbformat.writes(v4.new_notebook(cells=[v4.new_code_cell("my own work")]))
    (out / NAME).write_text(mine)
    assert run(src, out) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and "not generated by the build" in err and "--force" in err
    assert (out / NAME).read_text() == mine
    assert run(src, out, "--force") == 0
    assert "raise NotImplementedError" in (out / NAME).read_text()


def test_refuses_to_overwrite_an_edited_chapter(dirs, capsys):
    src, out = dirs
    assert run(src, out) == 0
    nb = nbformat.read(out / NAME, as_version=4)
    by_id(nb, "double").source = "def double(x):\n    return x + x  # a learner's answer"
    nbformat.write(nb, out / NAME)
    edited = (out / NAME).read_text()
    assert run(src, out) == 1
    assert "edited or run since it was generated" in capsys.readouterr().err
    assert (out / NAME).read_text() == edited
    assert run(src, out, "--force") == 0
    assert (out / NAME).read_text() != edited


def test_check_detects_missing_stale_and_extra(dirs, capsys):
    src, out = dirs
    assert run(src, out, "--check") == 1
    assert "missing:" in capsys.readouterr().err

    assert run(src, out) == 0
    assert run(src, out, "--check") == 0
    assert "up to date" in capsys.readouterr().out

    write_variant(src, lambda nb: setattr(nb.cells[0], "source", "# A new title"))
    assert run(src, out, "--check") == 1
    assert f"stale: {out / NAME}" in capsys.readouterr().err
    assert run(src, out) == 0
    assert run(src, out, "--check") == 0

    shutil.copy(FIXTURE, src / "02_gone.ipynb")
    assert run(src, out) == 0
    (src / "02_gone.ipynb").unlink()
    assert run(src, out, "--check") == 1
    assert "extra:" in capsys.readouterr().err
    assert run(src, out, "--prune") == 0
    assert not (out / "02_gone.ipynb").exists()
    assert run(src, out, "--check") == 0
    capsys.readouterr()

    # a learner's own file in chapters/ that no source would produce is not "extra"
    (out / "scratch.ipynb").write_text(nbformat.writes(v4.new_notebook()))
    assert run(src, out, "--check") == 0


# --- invalid sources ---------------------------------------------------------------------


def _region_in_plain_cell(nb):
    nb.cells[1].source = "import math\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION"


def _no_end(nb):
    nb.cells[2].source = nb.cells[2].source.replace("    ### END SOLUTION", "")


def _end_without_begin(nb):
    nb.cells[2].source = nb.cells[2].source.replace("    ### BEGIN SOLUTION", "")


def _outputs(nb):
    nb.cells[1].outputs = [v4.new_output("stream", name="stdout", text="hi\n")]
    nb.cells[1].execution_count = 1


def _execution_count(nb):
    nb.cells[3].execution_count = 7


def _duplicate_ids(nb):
    nb.cells[4].metadata.nbgrader["grade_id"] = "check_double"


def _hidden_tests_outside_grade_cell(nb):
    nb.cells[1].source = "import math\n### BEGIN HIDDEN TESTS\nassert True\n### END HIDDEN TESTS"


def _bad_metadata(nb):
    del nb.cells[3].metadata.nbgrader["points"]


@pytest.mark.parametrize(
    "edit, cell, message",
    [
        (_region_in_plain_cell, 1, "solution region in a cell that is not a solution cell"),
        (_no_end, 2, "'BEGIN SOLUTION' on line 3 without a matching 'END SOLUTION'"),
        (_end_without_begin, 2, "'END SOLUTION' on line 5 without a 'BEGIN SOLUTION'"),
        (_outputs, 1, "has stored outputs"),
        (_execution_count, 3, "has an execution count (7)"),
        (_duplicate_ids, 4, "duplicate grade_id 'check_double' (also used by cell 3)"),
        (_hidden_tests_outside_grade_cell, 1, "hidden tests region in a cell that is not a graded test cell"),
        (_bad_metadata, 3, "invalid nbgrader metadata"),
    ],
)
def test_invalid_sources_give_clear_errors(dirs, capsys, edit, cell, message):
    src, out = dirs
    path = write_variant(src, edit)
    source_bytes = path.read_bytes()
    with pytest.raises(build.BuildError) as exc:
        build.build_notebook(path)
    text = str(exc.value)
    assert f"solutions/{NAME}: cell {cell} (" in text
    assert message in text
    # the CLI says the same and writes nothing, in --check mode too
    assert run(src, out) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert run(src, out, "--check") == 1
    assert message in capsys.readouterr().err
    assert path.read_bytes() == source_bytes


def test_one_bad_source_means_nothing_is_written(dirs):
    src, out = dirs
    write_variant(src, _no_end, name="02_bad.ipynb")
    assert run(src, out) == 1
    assert not out.exists()


# --- the real course ---------------------------------------------------------------------


def test_chapters_are_up_to_date():
    sources = sorted(build.SOURCE_DIR.glob("*.ipynb"))
    if not sources:
        pytest.skip(f"{build.SOURCE_DIR} has no notebooks yet")
    if not os.environ.get("CI"):
        # A learner works in chapters/: their edited notebooks are their work, not a stale build.
        edited = [p.name for p in sorted(build.OUTPUT_DIR.glob("*.ipynb")) if build._existing_state(p) == "modified"]
        if edited:
            pytest.skip(f"chapters edited since they were generated (your own work?): {', '.join(edited)}; CI checks them")
    problems = build.check(build.SOURCE_DIR, build.OUTPUT_DIR)
    assert not problems, "chapters/ is out of date; run ./course build\n" + "\n".join(problems)


def test_check_tells_a_learner_with_an_edited_chapter_what_to_do(dirs, capsys):
    """--check must not send a learner to `./course build`, which refuses to overwrite their work."""
    src, out = dirs
    assert run(src, out) == 0
    nb = nbformat.read(out / NAME, as_version=4)
    nb.cells[-1].source += "\n# my answer"
    nbformat.write(nb, out / NAME)
    write_variant(src, lambda nb: setattr(nb.cells[0], "source", "# A new title"))
    assert run(src, out, "--check") == 1
    err = capsys.readouterr().err
    assert f"edited: {out / NAME}" in err and "keep it" in err and "move your copy away" in err, err
    assert run(src, out) == 1  # and the build indeed refuses
    assert "refusing to overwrite" in capsys.readouterr().err


def test_grading_build_hint_activates_the_environment(tmp_path, monkeypatch):
    import sys

    from utils.grading.course import next_step_hint

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    hint = next_step_hint(tmp_path / "my course")
    assert hint.startswith(f"Next: source {venv}/bin/activate && cd '{tmp_path}/my course' && nbgrader generate_assignment ch01")

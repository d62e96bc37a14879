"""Classroom grading: the course directory, hidden tests, grades that cannot be faked.

The slow test at the bottom runs the real nbgrader command line (generate_assignment,
autograde, generate_feedback) on the chapter-1 fixture submissions in
``tests/fixtures/grading/ch01_submissions.py`` and asserts each exact score.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from utils.checks import check, get_exercise
from utils.grading import ENV, Session, record
from utils.grading.course import build, instructor_notebook, nbgrader_env
from utils.grading.detect import reference_uses, tampering_in_source, uses_in_source, reference_paths
from utils.grading.judge import checks_in, grade_check
from utils.grading.kernel import bwrap_available, sandbox_command

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "grading"


def _load_submissions():
    spec = importlib.util.spec_from_file_location("ch01_submissions", FIXTURES / "ch01_submissions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ch01_submissions"] = module
    spec.loader.exec_module(module)
    return module


# ---- recording in the kernel, judging outside ---------------------------------------------------


def _record(tmp_path, monkeypatch, name, impl, hidden=False, secret=11):
    monkeypatch.setenv(ENV, Session(tmp_path, secret).to_env())
    check(name, impl, hidden=hidden)
    monkeypatch.delenv(ENV)
    return grade_check(tmp_path, name, "hidden" if hidden else "visible", secret)


def _mine(ex):
    """A learner's copy of the reference: same code, new code objects (not the toolkit's)."""
    import types

    fn = ex.reference
    return types.FunctionType(fn.__code__.replace(co_filename="<ipython-input-1>"), fn.__globals__, fn.__name__)


def test_grading_mode_records_and_the_judge_decides(tmp_path, monkeypatch, capsys):
    ex = get_exercise("causal_mask")
    verdict = _record(tmp_path, monkeypatch, "causal_mask", _mine(ex))
    assert "recorded for grading" in capsys.readouterr().out
    # Recording does not judge: the kernel has not seen a ✓ or ✗, the judge has.
    assert verdict.passed, verdict.message
    hidden = _record(tmp_path, monkeypatch, "causal_mask", _mine(ex), hidden=True)
    assert hidden.passed and "hidden tests" in hidden.message


def test_demonstrations_train_briefly_only_while_grading(monkeypatch, capsys):
    """No grade depends on a demonstration's training run, so autograding runs a few steps of it."""
    from utils.grading import ENV, Session, demo_steps
    from utils.training import train

    monkeypatch.delenv(ENV, raising=False)
    assert demo_steps(1000, "x") == 1000 and capsys.readouterr().out == ""
    monkeypatch.setenv(ENV, Session(Path("/nonexistent"), 1).to_env())
    assert demo_steps(1000, "training your transformer") == 20
    assert "training your transformer trains for 20 of its 1000 steps" in capsys.readouterr().out
    assert demo_steps(5, "x") == 5
    monkeypatch.setenv("COURSE_DEMO_STEPS", "0")
    assert demo_steps(1000, "x") == 1000
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("COURSE_DEMO_STEPS", "7")  # a dry run outside grading
    assert demo_steps(1000, "x") == 7 and "COURSE_DEMO_STEPS=7: x trains for 7" in capsys.readouterr().out
    monkeypatch.setenv("COURSE_DEMO_STEPS", "3")
    model = torch.nn.Linear(4, 4)
    log = train(model, torch.zeros(8, 4, dtype=torch.long), steps=50, batch_size=2, progress=False,
                step_fn=lambda m, opt, batch: (opt.step(), 0.0)[1])
    assert log.steps == [0, 1, 2]


def test_judge_names_the_mistake_but_hides_hidden_inputs(tmp_path, monkeypatch):
    ex = get_exercise("causal_mask")
    wrong = next(m.impl for m in ex.mistakes if m.name == "masks the diagonal")
    visible = _record(tmp_path, monkeypatch, "causal_mask", wrong)
    assert not visible.passed and "masks the diagonal" in visible.message and "input:" in visible.message
    hidden = _record(tmp_path, monkeypatch, "causal_mask", wrong, hidden=True)
    assert not hidden.passed and "hidden tests" in hidden.message
    # nothing about the hidden inputs (the extra case is 13 x 13 scores) or their seeds
    assert "input:" not in hidden.message and "13" not in hidden.message and "seed" not in hidden.message


def test_hidden_verdict_says_whether_the_visible_check_passed(tmp_path, monkeypatch):
    """"Although it passes the visible check" only when it does."""
    ex = get_exercise("causal_mask")
    wrong = next(m.impl for m in ex.mistakes if m.name == "masks the diagonal")
    _record(tmp_path, monkeypatch, "causal_mask", wrong)
    hidden = _record(tmp_path, monkeypatch, "causal_mask", wrong, hidden=True)
    assert not hidden.passed and "hidden tests too" in hidden.message and "passes the visible" not in hidden.message

    def crashes_on_hidden(scores):  # right on the visible inputs, raises on other shapes
        if scores.shape[-1] not in {c.get("pos", c.get("seq")) for c in ex.cases} | {None}:
            raise RuntimeError("only the visible sizes")
        return _mine(ex)(scores)

    other = tmp_path / "other"
    other.mkdir()
    assert _record(other, monkeypatch, "causal_mask", crashes_on_hidden).passed
    hidden = _record(other, monkeypatch, "causal_mask", crashes_on_hidden, hidden=True)
    assert not hidden.passed and "although it passes the visible check" in hidden.message


def test_calling_the_reference_gets_no_credit(tmp_path, monkeypatch):
    from utils import transformer

    class LayerNorm(transformer.LayerNorm):  # "my" LayerNorm, inheriting the toolkit's forward
        pass

    verdict = _record(tmp_path, monkeypatch, "layernorm", LayerNorm)
    assert not verdict.passed and "reference implementation" in verdict.message

    def mask(scores):
        return transformer.apply_causal_mask(scores)

    verdict = _record(tmp_path, monkeypatch, "causal_mask", mask)
    assert not verdict.passed and "apply_causal_mask" in verdict.message


def test_records_from_another_run_or_tampered_are_rejected(tmp_path, monkeypatch):
    ex = get_exercise("causal_mask")
    _record(tmp_path, monkeypatch, "causal_mask", _mine(ex), secret=5)
    # the same record under another run's secret (a file brought along with the submission)
    stale = grade_check(tmp_path, "causal_mask", "visible", secret=6)
    assert not stale.passed and "not produced by this grading run" in stale.message
    # outputs written by hand: wrong values are judged like any other
    json_path, tensor_path = record.paths(tmp_path, "causal_mask", "visible")
    rec = record.read(tmp_path, "causal_mask", "visible", 5)
    rec.outputs[0]["pattern"] = torch.zeros_like(rec.outputs[0]["pattern"])
    record.write(tmp_path, rec)
    assert not grade_check(tmp_path, "causal_mask", "visible", 5).passed
    # garbage where the tensors should be
    tensor_path.write_bytes(b"not a safetensors file")
    garbage = grade_check(tmp_path, "causal_mask", "visible", 5)
    assert not garbage.passed and "could not be read" in garbage.message
    missing = grade_check(tmp_path, "layernorm", "visible", 5)
    assert not missing.passed and "no outputs were recorded" in missing.message


def test_record_round_trip_keeps_types():
    tensors = {}
    value = [{"a": torch.arange(3), "b": 1.5, "c": float("nan"), "d": (1, "x"), 7: None, "e": object()}]
    back = record.decode(json.loads(json.dumps(record.encode(value, tensors))), tensors)
    assert torch.equal(back[0]["a"], torch.arange(3)) and back[0]["b"] == 1.5 and back[0]["d"] == (1, "x")
    assert back[0][7] is None and repr(back[0]["e"]) == "<object>" and back[0]["c"] != back[0]["c"]


# ---- reading the notebook's code ---------------------------------------------------------------


def test_reference_uses_are_found_however_imported():
    refs = reference_paths()
    source = (
        "import utils.transformer as t\nclass LayerNorm(t.LayerNorm): pass\n"
        "from utils.sampling import sample_greedy as g\n"
        "import importlib\nm = importlib.import_module('utils.sampling')\nf = getattr(m, 'sample_top_k')\n"
        "from utils.transformer import Config\n%timeit 1\n"
    )
    found = {u.path for u in uses_in_source(source, refs)}
    assert found == {"utils.transformer.LayerNorm", "utils.sampling.sample_greedy", "utils.sampling.sample_top_k"}


@pytest.mark.parametrize("source,what", [
    ("check = lambda *a, **k: print('✓')", "redefines check"),
    ("import utils.checks\nutils.checks.check = print", "changes utils.checks.check"),
    ("from utils.checks.core import judge", "imports from utils.checks.core"),
    ("torch.allclose = lambda *a, **k: True", "changes torch.allclose"),
    ("torch.testing.assert_close = lambda *a, **k: None", "changes torch.testing.assert_close"),
    ("import sys\nsys.setprofile(None)", "calls setprofile()"),
    ("exec(open('x.py').read())", "calls exec()"),
    ("outs = get_exercise('mlp').reference", "uses .reference"),
    ("import os\nos.environ['COURSE_GRADING'] = '{}'", "changes os.environ"),
])
def test_tampering_is_found(source, what):
    assert what in [t.what for t in tampering_in_source(source)]


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name[:2])
def test_honest_notebooks_raise_no_alarm(path):
    """The reference solutions of every chapter, graded as a student's: no tampering, no reference use."""
    from utils.grading.detect import tampering

    nb = instructor_notebook(path)
    assert tampering(nb) == []
    assert reference_uses(nb) == {}


# ---- the course directory ------------------------------------------------------------------------


def test_course_directory_has_hidden_tests_and_read_only_course_code(tmp_path):
    report = build(tmp_path, ["01"])
    assert any("nbgrader_config.py" in line for line in report)
    nb = nbformat.read(tmp_path / "source" / "ch01" / "01_transformer_from_scratch.ipynb", 4)
    checks = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata["nbgrader"].get("solution")]
    assert len(checks) == 16
    for cell in checks:
        calls = checks_in(cell.source)
        assert [suite for _, suite in calls] == ["visible", "hidden"], cell.source
        assert "### BEGIN HIDDEN TESTS" in cell.source
    provided = [c for c in nb.cells if c.cell_type == "code" and not c.metadata["nbgrader"].get("solution") and not c.metadata["nbgrader"].get("grade")]
    assert provided and all(c.metadata["nbgrader"]["locked"] for c in provided)
    # An instructor's edits are kept unless --force.
    config = tmp_path / "nbgrader_config.py"
    config.write_text(config.read_text() + "\n# my change\n")
    assert any(line.startswith("kept") for line in build(tmp_path, ["01"]))
    assert config.read_text().endswith("# my change\n")
    # every chapter gets the same treatment without extra work
    build(tmp_path, None)
    assert len(list((tmp_path / "source").glob("ch*/*.ipynb"))) == len(list((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")))


# ---- the sandbox ---------------------------------------------------------------------------------

needs_bwrap = pytest.mark.skipif(not bwrap_available() and not os.environ.get("CI"),
                                 reason="bubblewrap (bwrap) is not installed or cannot run here")


@needs_bwrap
def test_sandbox_hides_the_course_and_the_network(tmp_path):
    assert bwrap_available(), "CI must have bubblewrap (.ci/run installs it)"
    work = tmp_path / "autograded" / "alice" / "ch01"
    work.mkdir(parents=True)
    (tmp_path / "gradebook.db").write_text("secret grades")
    (tmp_path / "autograded" / "bob").mkdir()
    (tmp_path / "autograded" / "bob" / "answer.txt").write_text("bob's work")
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    probe = (
        "import os, socket, pathlib\n"
        f"print('gradebook', os.path.exists({str(tmp_path / 'gradebook.db')!r}))\n"
        f"print('bob', os.path.exists({str(tmp_path / 'autograded' / 'bob' / 'answer.txt')!r}))\n"
        f"print('solutions', os.path.exists({str(ROOT / 'solutions')!r}))\n"
        f"print('toolkit', os.path.exists({str(ROOT / 'utils' / 'transformer.py')!r}))\n"
        "pathlib.Path('out.txt').write_text('written')\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); print('network yes')\n"
        "except OSError:\n    print('network no')\n"
        "import utils.transformer; print('import ok')\n"
    )
    cmd = sandbox_command([sys.executable, "-c", probe], str(runtime / "kernel.json"), str(work))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:6] == ["gradebook False", "bob False", "solutions False", "toolkit True",
                                           "network no", "import ok"], out.stdout
    assert (work / "out.txt").read_text() == "written"


def test_memory_limit_makes_a_hog_fail_inside_python():
    probe = ("import resource, sys\nfrom utils.grading.kernel import set_limits\nset_limits('2G', None)\n"
             "import torch\nhoard = []\ntry:\n    while True:\n        hoard.append(torch.ones(2**26))\n"
             "except (MemoryError, RuntimeError) as e:\n    print('stopped after', len(hoard))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("stopped after"), out.stdout + out.stderr
    assert int(out.stdout.split()[-1]) < 8  # 256 MB each: stopped before 2 GB


# ---- the real nbgrader, on fixture submissions ---------------------------------------------------


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=nbgrader_env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def graded_course(tmp_path_factory):
    from utils.grading.course import autograde

    fixtures = _load_submissions()
    course = tmp_path_factory.mktemp("course")
    build(course, ["01"])
    _nbgrader(course, "generate_assignment", "ch01", "--force")
    release = nbformat.read(course / "release" / "ch01" / "01_transformer_from_scratch.ipynb", 4)
    solution = nbformat.read(ROOT / "solutions" / "01_transformer_from_scratch.ipynb", 4)
    for sub in fixtures.SUBMISSIONS:
        nb = fixtures.fill_in(release, solution)
        sub.edit(nb)
        folder = course / "submitted" / sub.student / "ch01"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "01_transformer_from_scratch.ipynb")
    env = {"COURSE_SANDBOX": "1" if bwrap_available() or os.environ.get("CI") else "0", "COURSE_KERNEL_MEMORY": "4G"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        start = time.monotonic()
        results = autograde(course, "ch01", [s.student for s in fixtures.SUBMISSIONS], jobs=2)
        total = time.monotonic() - start
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    print(f"\nautograde, 2 at a time: {total:.0f} s for {len(results)} submissions")
    for student, seconds, code in results:
        print(f"  {student:15s} {seconds:6.1f} s  exit {code}")
        assert code == 0, (course / "autograde_logs" / f"ch01-{student}.log").read_text()[-4000:]
    return course, fixtures


def _score(course: Path, student: str) -> float:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return gb.find_submission("ch01", student).score


def _autograded(course: Path, student: str):
    return nbformat.read(course / "autograded" / student / "ch01" / "01_transformer_from_scratch.ipynb", 4)


SUBMISSIONS = _load_submissions().SUBMISSIONS


@pytest.mark.slow
@pytest.mark.parametrize("sub", SUBMISSIONS, ids=lambda s: s.student)
def test_autograde_gives_the_exact_score(graded_course, sub):
    course, fixtures = graded_course
    assert _score(course, sub.student) == sub.expected, f"{sub.student} ({sub.why})"


@pytest.mark.slow
def test_autograded_verdicts_explain_themselves(graded_course):
    course, _ = graded_course

    def outputs(student, grade_id):
        for cell in _autograded(course, student).cells:
            if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
                return "".join(o.get("text", "") + o.get("evalue", "") for o in cell.outputs)
        raise KeyError(grade_id)

    assert "argmin" not in outputs("partly_wrong", "check_greedy")  # the verdict, not the student's code
    assert "✗ greedy" in outputs("partly_wrong", "check_greedy")
    assert "not implemented yet" in outputs("partly_wrong", "check_kv_cache")
    assert "more than" in outputs("infinite_loop", "check_kv_cache")  # stopped by the time limit
    assert "MemoryError" in outputs("infinite_loop", "check_greedy") or "memory" in outputs("infinite_loop", "check_greedy").lower()
    assert "✓ layernorm" in outputs("warns", "check_layernorm")
    assert "changes or bypasses" in outputs("monkeypatches", "check_embed")
    assert "changes or bypasses" in outputs("patches_torch", "check_embed")
    # the snooping cell found nothing to read in the sandbox
    snoop = [c for c in _autograded(course, "snoops").cells if "readable:" in "".join(o.get("text", "") for o in c.get("outputs", []))]
    assert snoop and "readable: []" in "".join(o.get("text", "") for o in snoop[0].outputs)


@pytest.mark.slow
def test_feedback_never_shows_hidden_tests(graded_course):
    course, _ = graded_course
    _nbgrader(course, "generate_feedback", "ch01", "--student", "partly_wrong", "--force")
    html = next((course / "feedback" / "partly_wrong" / "ch01").glob("*.html")).read_text()
    assert "hidden=True" not in html and "BEGIN HIDDEN TESTS" not in html
    assert "✗ greedy" in html  # the visible verdict is there


def _mini_source() -> nbformat.NotebookNode:
    """A two-exercise assignment that grades in seconds."""
    def meta(grade_id, **kw):
        return {"nbgrader": {"grade_id": grade_id, "grade": False, "solution": False, "locked": False,
                             "schema_version": 3, "task": False, **kw}}

    cells = [
        nbformat.v4.new_code_cell("import torch\nfrom utils.checks import check", metadata=meta("setup", locked=True)),
        nbformat.v4.new_code_cell(
            "def apply_causal_mask(scores):\n    ### BEGIN SOLUTION\n    n = scores.shape[-1]\n"
            "    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float('-inf'))\n"
            "    ### END SOLUTION", metadata=meta("causal_mask", solution=True)),
        nbformat.v4.new_code_cell('check("causal_mask", apply_causal_mask)',
                                  metadata=meta("check_causal_mask", grade=True, locked=True, points=1)),
        nbformat.v4.new_code_cell("def sample_greedy(logits):\n    ### BEGIN SOLUTION\n    return logits.argmax(-1)\n"
                                  "    ### END SOLUTION", metadata=meta("greedy", solution=True)),
        nbformat.v4.new_code_cell('check("greedy", sample_greedy)',
                                  metadata=meta("check_greedy", grade=True, locked=True, points=1)),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.mark.slow
def test_a_cell_that_kills_the_kernel_costs_only_itself(tmp_path):
    """The kernel dies in a student's cell (here: it kills itself, as the OOM killer would):
    nbgrader alone abandons the whole notebook; here the kernel restarts and grading goes on."""
    course = tmp_path / "course"
    build(course, ["01"])  # config and grading kernel
    src = tmp_path / "99_mini.ipynb"
    nbformat.write(_mini_source(), src)
    (course / "source" / "mini").mkdir(parents=True)
    nbformat.write(instructor_notebook(src), course / "source" / "mini" / "99_mini.ipynb")
    _nbgrader(course, "generate_assignment", "mini", "--force")
    nb = nbformat.read(course / "release" / "mini" / "99_mini.ipynb", 4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in _mini_source().cells}
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answers[cell.metadata["nbgrader"]["grade_id"]]
    nb.cells.insert(2, _load_submissions().new_cell(nb, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))
    folder = course / "submitted" / "crasher" / "mini"
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / "99_mini.ipynb")
    _nbgrader(course, "autograde", "mini", "--student", "crasher", "--force")
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        assert gb.find_submission("mini", "crasher").score == 2.0
    graded = nbformat.read(course / "autograded" / "crasher" / "mini" / "99_mini.ipynb", 4)
    assert any(o.get("ename") == "KernelDied" for c in graded.cells if c.cell_type == "code" for o in c.outputs)

    # zip_collect: files downloaded from a learning-management system, named "<id>_..._<notebook>"
    archive = course / "downloaded" / "mini" / "archive"
    archive.mkdir(parents=True)
    nbformat.write(nb, archive / "dora_attempt_2026-11-20_99_mini.ipynb")
    _nbgrader(course, "zip_collect", "mini", "--force")
    assert (course / "submitted" / "dora" / "mini" / "99_mini.ipynb").is_file()


@pytest.mark.slow
def test_every_later_chapter_grades_its_reference_solution_with_full_marks(tmp_path):
    """Chapters 2 onwards as assignments (chapter 1 is graded above): the reference answers,
    submitted as a student's, get every point, hidden tests included."""
    from concurrent.futures import ThreadPoolExecutor

    from nbgrader.api import Gradebook

    from utils.grading.course import autograde

    fixtures = _load_submissions()
    course = tmp_path / "course"
    build(course, None)
    later = sorted(p for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("01"))
    for path in later:
        name = f"ch{path.name[:2]}"
        _nbgrader(course, "generate_assignment", name, "--force")
        release = nbformat.read(course / "release" / name / path.name, 4)
        folder = course / "submitted" / "reference" / name
        folder.mkdir(parents=True)
        nbformat.write(fixtures.fill_in(release, nbformat.read(path, 4)), folder / path.name)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: autograde(course, f"ch{p.name[:2]}", ["reference"])[0], later))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for path, (_, seconds, code) in zip(later, results):
            name = f"ch{path.name[:2]}"
            assert code == 0, (course / "autograde_logs" / f"{name}-reference.log").read_text()[-4000:]
            sub = gb.find_submission(name, "reference")
            print(f"\n{name}: {sub.score:g}/{sub.max_score:g} in {seconds:.0f} s")
            assert sub.max_score >= 10 and sub.score == sub.max_score, name
            # Demonstrations train for a few steps only while grading; no cell may break on that.
            graded = nbformat.read(course / "autograded" / "reference" / name / path.name, 4)
            errors = [(c.source[:80], o.get("ename")) for c in graded.cells if c.cell_type == "code"
                      for o in c.get("outputs", []) if o.output_type == "error"]
            assert not errors, f"{name}: cells failed while grading: {errors}"
            if name != "ch04":  # chapter 4 loads a shipped model; 2 and 3 train theirs live
                assert any("autograding:" in o.get("text", "") for c in graded.cells if c.cell_type == "code"
                           for o in c.get("outputs", [])), f"{name}: no demonstration said it was shortened"

"""Classroom grading: the course directory, hidden tests, grades that cannot be faked.

The slow test at the bottom runs the real nbgrader command line (generate_assignment,
autograde, generate_feedback) on the chapter-1 fixture submissions in
``tests/fixtures/grading/ch01_submissions.py`` and asserts each exact score.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import textwrap
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from utils.checks import check, get_exercise
from utils.grading import ENV, record
from utils.grading.course import build, instructor_notebook, nbgrader_env
from utils.grading.detect import locate, reference_paths, reference_uses, review_in_source, uses_in_source
from utils.grading.judge import checks_in, grade_payloads
from utils.grading.kernel import NOBODY, bwrap_available, sandbox_command

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "grading"


def _load_submissions():
    spec = importlib.util.spec_from_file_location("ch01_submissions", FIXTURES / "ch01_submissions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ch01_submissions"] = module
    spec.loader.exec_module(module)
    return module


# ---- recording in the kernel, judging outside ---------------------------------------------------


def _payloads(name, impl, hidden=False, seed=11, token="t0k3n"):
    """What a check cell run by the grader publishes: its records."""
    record.OUTBOX.clear()
    check(name, impl, hidden=hidden, _grading=f"{token}:{seed if hidden else 0}")
    out = list(record.OUTBOX)
    record.OUTBOX.clear()
    return out


def _record(name, impl, hidden=False, seed=11, visible=None):
    suite = "hidden" if hidden else "visible"
    return grade_payloads(_payloads(name, impl, hidden, seed), name, suite, "t0k3n", seed if hidden else 0, visible)


def _mine(ex):
    """A learner's own causal mask (written here, not the toolkit's code)."""
    assert ex.name == "causal_mask"

    def apply_causal_mask(scores):
        rows, cols = scores.shape[-2], scores.shape[-1]
        offset = cols - rows  # queries are the last `rows` positions
        future = torch.ones(rows, cols, dtype=torch.bool).triu(diagonal=offset + 1)
        return torch.where(future, torch.full_like(scores, float("-inf")), scores)

    return apply_causal_mask


def _rebuilt(fn, filename="<ipython-input-1>"):
    """The reference rebuilt from its code object under another file name: a copy."""
    import types

    return types.FunctionType(fn.__code__.replace(co_filename=filename), fn.__globals__, fn.__name__)


def test_grading_mode_records_and_the_judge_decides(capsys):
    ex = get_exercise("causal_mask")
    verdict = _record("causal_mask", _mine(ex))
    assert "recorded for grading" in capsys.readouterr().out
    # Recording does not judge: the kernel has not seen a ✓ or ✗, the judge has.
    assert verdict.passed, verdict.message
    hidden = _record("causal_mask", _mine(ex), hidden=True, visible=verdict)
    assert hidden.passed and "hidden tests" in hidden.message


def test_while_grading_a_learners_own_check_calls_do_nothing(monkeypatch, capsys):
    """Only the course's check cells, run by the grader with their tokens, record anything."""
    monkeypatch.setenv(ENV, "1")
    record.OUTBOX.clear()
    check("causal_mask", _mine(get_exercise("causal_mask")))
    assert record.OUTBOX == [] and "do not run while the notebook is being graded" in capsys.readouterr().out


def test_demonstrations_train_briefly_only_while_grading(monkeypatch, capsys):
    """No grade depends on a demonstration's training run, so autograding runs a few steps of it."""
    from utils.grading import ENV, demo_steps
    from utils.training import train

    monkeypatch.delenv(ENV, raising=False)
    assert demo_steps(1000, "x") == 1000 and capsys.readouterr().out == ""
    monkeypatch.setenv(ENV, "1")
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


def test_judge_names_the_mistake_but_hides_hidden_inputs():
    ex = get_exercise("causal_mask")
    wrong = next(m.impl for m in ex.mistakes if m.name == "masks the diagonal")
    visible = _record("causal_mask", wrong)
    assert not visible.passed and "masks the diagonal" in visible.message and "input:" in visible.message
    hidden = _record("causal_mask", wrong, hidden=True, visible=visible)
    assert not hidden.passed and "hidden tests" in hidden.message
    # nothing about the hidden inputs (the extra case is 13 x 13 scores) or their seeds
    assert "input:" not in hidden.message and "13" not in hidden.message and "seed" not in hidden.message


def test_hidden_verdict_says_whether_the_visible_check_passed():
    """"Although it passes the visible check" only when it does."""
    ex = get_exercise("causal_mask")
    wrong = next(m.impl for m in ex.mistakes if m.name == "masks the diagonal")
    visible = _record("causal_mask", wrong)
    hidden = _record("causal_mask", wrong, hidden=True, visible=visible)
    assert not hidden.passed and "hidden tests too" in hidden.message and "passes the visible" not in hidden.message

    def crashes_on_hidden(scores):  # right on the visible inputs, raises on other shapes
        if scores.shape[-1] not in {c.get("pos", c.get("seq")) for c in ex.cases} | {None}:
            raise RuntimeError("only the visible sizes")
        return _mine(ex)(scores)

    visible = _record("causal_mask", crashes_on_hidden)
    assert visible.passed
    hidden = _record("causal_mask", crashes_on_hidden, hidden=True, visible=visible)
    assert not hidden.passed and "although it passes the visible check" in hidden.message


def test_calling_the_reference_gets_no_credit():
    from utils import transformer

    class LayerNorm(transformer.LayerNorm):  # "my" LayerNorm, inheriting the toolkit's forward
        pass

    verdict = _record("layernorm", LayerNorm)
    assert not verdict.passed and "reference implementation" in verdict.message

    def mask(scores):
        return transformer.apply_causal_mask(scores)

    verdict = _record("causal_mask", mask)
    assert not verdict.passed and "apply_causal_mask" in verdict.message


def test_copies_of_the_reference_are_found_by_what_runs(tmp_path):
    """A copy of the toolkit's reference gets no credit however it was made: rebuilt from its
    code object, exec-ed from its file's text, or imported from a copy of the file."""
    import importlib.util

    from utils import sampling, transformer

    rebuilt = _record("causal_mask", _rebuilt(transformer.apply_causal_mask))
    assert not rebuilt.passed and "copy of apply_causal_mask" in rebuilt.message, rebuilt.message
    short = _record("greedy", _rebuilt(sampling.sample_greedy))  # 8 instructions, same lines: still a copy
    assert not short.passed and "copy of sample_greedy" in short.message
    namespace = {"__name__": "copied"}
    exec(compile(Path(sampling.__file__).read_text().replace("from .", "from utils."), "<string>", "exec"), namespace)
    executed = _record("top_p", namespace["sample_top_p"])
    assert not executed.passed and "copy of sample_top_p" in executed.message
    copy_file = tmp_path / "my_transformer.py"
    copy_file.write_text(Path(transformer.__file__).read_text().replace("from .", "from utils."))  # as a copier would
    spec = importlib.util.spec_from_file_location("my_transformer", copy_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_transformer"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["my_transformer"]
    executed = _record("layernorm", module.LayerNorm)
    assert not executed.passed and "LayerNorm.forward" in executed.message
    imported = _record("attention", module.Attention)
    assert not imported.passed and "Attention.forward" in imported.message
    # a near copy: the reference's text with a line added and locals renamed
    source = inspect.getsource(transformer.Attention.forward)
    assert "q = self.hook_q(" in source  # (the edit below must apply)
    near = textwrap.dedent(source).replace("q = self.hook_q(", "unused = 0\n    query = q = self.hook_q(", 1)
    ns = dict(vars(transformer))
    exec(compile("class Attention(Attention):\n" + textwrap.indent(near, "    "), "<cell>", "exec"), ns)
    nearly = _record("attention", ns["Attention"])  # listed for review, at no cost: a human decides
    assert nearly.passed and any("near copy of the reference's Attention.forward" in r for r in nearly.review), nearly
    # an honest answer is not a copy
    assert _record("causal_mask", _mine(get_exercise("causal_mask"))).passed


def test_a_record_counts_only_once_with_its_token():
    ex = get_exercise("causal_mask")
    payloads = _payloads("causal_mask", _mine(ex))
    assert grade_payloads(payloads, "causal_mask", "visible", "t0k3n", 0).passed
    # a record without this call's token (precomputed, or from another check) is a forgery
    forged = grade_payloads(payloads, "causal_mask", "visible", "another", 0)
    assert not forged.passed and "not produced by this check" in forged.message and "review list" in forged.message
    # a second record beside the real one: which is real cannot be told, so neither counts
    twice = grade_payloads(payloads * 2, "causal_mask", "visible", "t0k3n", 0)
    assert not twice.passed and "sent 2 sets of outputs" in twice.message
    # outputs edited by hand are judged like any other
    edited = json.loads(json.dumps(payloads[0]))
    rec = record.from_payload(edited, "causal_mask", "visible", "t0k3n")
    rec.outputs[0]["pattern"] = torch.zeros_like(rec.outputs[0]["pattern"])
    assert not grade_payloads([record.to_payload(rec)], "causal_mask", "visible", "t0k3n", 0).passed
    # garbage where the tensors should be
    garbage = {**payloads[0], "tensors": "bm90IHNhZmV0ZW5zb3Jz"}
    verdict = grade_payloads([garbage], "causal_mask", "visible", "t0k3n", 0)
    assert not verdict.passed and "could not be read" in verdict.message
    missing = grade_payloads(payloads, "layernorm", "visible", "t0k3n", 0)
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


PROBE_SCRIPT = r"""
import json, os, re, sys
import torch
from utils.grading import probe
assert probe.changes() == []  # the baseline
# honest code: names that look alarming, changes to nothing the checks rely on
model = torch.nn.Linear(2, 2); model.eval(); model.train()
pattern = re.compile("a+")
os.environ["MY_SETTING"] = "1"
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
torch.manual_seed(0); torch.set_default_dtype(torch.float32)
record, check, collect = [], "mine", 3
eval("1 + 1")
honest = probe.changes()
# tampering, whatever the syntax
torch.allclose = lambda *a, **k: True
setattr(torch.nn.functional, "gelu", lambda x, **k: x)
sys.modules["utils.checks"].check = print
import utils.checks.core as core
core.collect.__code__ = (lambda *a, **k: []).__code__
print(json.dumps({"honest": honest, "tampered": probe.changes()}))
"""


def test_probe_sees_what_changed_not_what_is_named():
    """Flags come from what actually changed in the kernel, never from names in the source."""
    out = subprocess.run([sys.executable, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["honest"] == []
    assert {"torch.allclose", "torch.nn.functional.gelu", "utils.checks.check",
            "utils.checks.core.collect.__code__"} <= set(result["tampered"]), result["tampered"]


def test_a_change_is_located_to_its_line():
    source = "import torch, sys\nx = 1\ntorch.allclose = lambda *a: True\nsetattr(torch, 'equal', 3)\n" \
             "sys.modules['utils.checks'].check = print\n"
    lines = {f.line for f in locate(source, ["torch.allclose", "torch.equal", "utils.checks.check"])}
    assert lines == {3, 4, 5}
    assert locate("model.eval()\nimport re\nre.compile('x')", ["torch.allclose"]) == []


@pytest.mark.parametrize("source,what", [
    ("import sys\nm = sys.modules['utils.checks']", "looks modules up in sys.modules"),
    ("import inspect\nf = inspect.currentframe().f_back", "reads the caller's frame"),
    ("import sys\nf = sys._getframe(1)", "reads the caller's frame"),
    ("import types\nf = types.FunctionType(code, {})", "builds a function from a code object"),
    ("exec(open('x.py').read())", "runs code built at run time"),
    ("import os\nos.environ.get('COURSE_GRADING')", "reads the grading settings"),
    ("from utils.grading import record", "imports from utils.grading"),
])
def test_constructs_worth_a_look_are_listed_for_review(source, what):
    assert any(what in f.what for f in review_in_source(source)), review_in_source(source)


def test_honest_constructs_are_not_listed():
    source = ("model.eval()\nimport re\npat = re.compile('a')\nimport os\nos.environ['X'] = '1'\n"
              "import torch\ntorch.backends.cudnn.deterministic = True\nrecord = []\ncheck = 1\n"
              "exec('x = 1')\nvalue = eval('2')\n")
    assert review_in_source(source) == []


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name[:2])
def test_honest_notebooks_raise_no_alarm(path):
    """The reference solutions of every chapter, graded as a student's: nothing for review, no
    reference named, and none of their code is a copy of the toolkit's reference."""
    import types

    from IPython.core.inputtransformer2 import TransformerManager

    from utils.grading import copies
    from utils.grading.detect import learner_cells

    nb = instructor_notebook(path)
    assert [(i, review_in_source(src)) for i, src in learner_cells(nb) if review_in_source(src)] == []
    assert reference_uses(nb) == {}

    def codes(code):
        yield code
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                yield from codes(c)

    for i, source in learner_cells(nb):
        compiled = compile(TransformerManager().transform_cell(source), f"<cell {i}>", "exec")
        found = copies.find_copies(copies.fingerprints(list(codes(compiled))))
        assert [c for c in found if c.how == "copy"] == [], (i, found)


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
    probe += (
        "print('uid', os.getuid())\n"
        "try:\n    open('/etc/shadow').read(); print('shadow readable')\nexcept OSError:\n    print('shadow no')\n"
        "print('env', sorted(k for k in os.environ if k not in ('PATH', 'HOME', 'TMPDIR', 'LANG', 'PWD',"
        " 'JUPYTER_RUNTIME_DIR', 'MPLCONFIGDIR', 'COURSE_GRADING', 'OMP_NUM_THREADS')))\n"
        "from utils.grading.kernel import set_limits\nset_limits(None, None, None, '1M')\n"
        "try:\n    open('big.bin', 'wb').write(b'x' * 2**21); print('big file yes')\n"
        "except OSError:\n    print('big file no')\n"
    )
    from utils.grading.kernel import _give

    drop_to = NOBODY if os.getuid() == 0 else None
    if drop_to is not None:
        _give([str(work), str(runtime)], drop_to)
    old = os.environ.get("GRADER_ONLY_SECRET")
    os.environ["GRADER_ONLY_SECRET"] = "must not reach the kernel"
    try:
        cmd = sandbox_command([sys.executable, "-c", probe], str(runtime / "kernel.json"), str(work), drop_to)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        os.environ.pop("GRADER_ONLY_SECRET") if old is None else os.environ.__setitem__("GRADER_ONLY_SECRET", old)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[:6] == ["gradebook False", "bob False", "solutions False", "toolkit True",
                         "network no", "import ok"], out.stdout
    assert lines[6] != "uid 0" and lines[7] == "shadow no" and lines[8] == "env []", out.stdout
    assert lines[9] == "big file no", out.stdout
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
        if sub.files is not None:
            sub.files(folder, course)
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


def _outputs(course, student, grade_id):
    for cell in _autograded(course, student).cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return "".join(o.get("text", "") + o.get("evalue", "") for o in cell.outputs)
    raise KeyError(grade_id)


def _review(course, student):
    path = course / "autograde_logs" / "review" / "ch01" / f"{student}.json"
    return json.loads(path.read_text())["01_transformer_from_scratch"] if path.is_file() else []


@pytest.mark.slow
def test_autograded_verdicts_explain_themselves(graded_course):
    course, _ = graded_course

    def outputs(student, grade_id):
        return _outputs(course, student, grade_id)

    assert "argmin" not in outputs("partly_wrong", "check_greedy")  # the verdict, not the student's code
    assert "✗ greedy" in outputs("partly_wrong", "check_greedy")
    assert "not implemented yet" in outputs("partly_wrong", "check_kv_cache")
    assert "more than" in outputs("infinite_loop", "check_kv_cache")  # stopped by the time limit
    assert "MemoryError" in outputs("infinite_loop", "check_greedy") or "memory" in outputs("infinite_loop", "check_greedy").lower()
    assert "✓ layernorm" in outputs("warns", "check_layernorm")
    for student in ("monkeypatches", "patches_torch"):
        assert "the notebook changed what the checks rely on" in outputs(student, "check_embed")
    assert "torch.allclose" in outputs("patches_torch", "check_embed") and "line 1" in outputs("patches_torch", "check_embed")
    # the snooping cell found nothing to read, ran as an unprivileged user, saw no secret
    snoop = "".join(o.get("text", "") for c in _autograded(course, "snoops").cells for o in c.get("outputs", []))
    assert "readable: []" in snoop and "shadow: unreadable" in snoop and "secret in environment: False" in snoop
    if os.getuid() == 0 and (bwrap_available() or os.environ.get("CI")):
        assert "uid: 0\n" not in snoop


@pytest.mark.slow
def test_forged_records_and_a_fake_checker_get_nothing(graded_course):
    """Records sent from any cell but their own check cell, or without the check's token, count
    for nothing; a checker replaced through sys.modules is found, with its line, and costs only
    the checks that ran after it."""
    course, _ = graded_course
    assert "forged" in _outputs(course, "forges_records", "check_embed") or \
        "not implemented" in _outputs(course, "forges_records", "check_embed")
    assert any(item["what"].startswith("record output outside its check cell") for item in _review(course, "forges_records"))
    assert "✓ train_step" in _outputs(course, "through_sys_modules", "check_train_step")
    fake = _outputs(course, "through_sys_modules", "check_greedy")
    assert "utils.checks.check" in fake and "setattr(checks, 'check', ...)" in fake, fake


@pytest.mark.slow
def test_copies_of_the_reference_get_no_credit_and_are_listed(graded_course):
    course, _ = graded_course
    for grade_id in ("check_embed", "check_layernorm", "check_attention", "check_transformer", "check_train_step",
                     "check_greedy", "check_top_p"):
        assert "copy of" in _outputs(course, "copies_reference", grade_id), grade_id
    assert "✓ kv_cache" in _outputs(course, "copies_reference", "check_kv_cache")
    assert sum(item.get("cost", False) for item in _review(course, "copies_reference")) >= 15


@pytest.mark.slow
def test_honest_code_is_never_flagged(graded_course):
    """model.eval(), re.compile, os.environ, torch.backends flags, a helper named check, exit():
    full marks, and nothing on the review list that costs a point."""
    course, _ = graded_course
    for student in ("correct", "honest_flags", "warns", "leaks_feedback", "metadata_edits"):
        costly = [item for item in _review(course, student) if item.get("cost")]
        assert costly == [], (student, costly)
    assert "KernelDied" in "".join(o.get("ename", "") for c in _autograded(course, "honest_flags").cells
                                   if c.cell_type == "code" for o in c.get("outputs", []))
    restored = {item["what"] for item in _review(course, "metadata_edits")}
    assert any("role restored" in what for what in restored) and any("cell type restored" in what for what in restored)


@pytest.mark.slow
def test_expected_differences_are_not_reported_as_edits(graded_course):
    """Every read-only cell differs from the gradebook's by its hidden tests: that is not worth a
    warning. A real edit is, by name."""
    course, _ = graded_course
    log = (course / "autograde_logs" / "ch01-correct.log").read_text()
    assert "has changed" not in log and "was edited" not in log
    edited = (course / "autograde_logs" / "ch01-deletes_tests.log").read_text()
    assert "check_greedy: a read-only cell was edited" in edited and "has changed" not in edited


@pytest.mark.slow
def test_feedback_never_shows_hidden_tests(graded_course):
    course, _ = graded_course
    _nbgrader(course, "generate_feedback", "ch01", "--student", "partly_wrong", "--force")
    html = next((course / "feedback" / "partly_wrong" / "ch01").glob("*.html")).read_text()
    assert "hidden=True" not in html and "BEGIN HIDDEN TESTS" not in html
    assert "✗ greedy" in html  # the visible verdict is there


@pytest.mark.slow
def test_nothing_but_the_notebook_reaches_feedback(graded_course):
    """The kernel worked in a scratch copy and links are never followed: the gradebook, other
    students' work, the instructor's source and hidden tests never reach autograded/ or feedback/."""
    course, _ = graded_course
    graded = course / "autograded" / "leaks_feedback" / "ch01"
    assert sorted(p.name for p in graded.iterdir()) == ["01_transformer_from_scratch.ipynb", "my_notes.md"]
    _nbgrader(course, "generate_feedback", "ch01", "--student", "leaks_feedback", "--force")
    feedback = course / "feedback" / "leaks_feedback" / "ch01"
    files = [p for p in feedback.rglob("*")]
    assert [p.name for p in files if p.is_file() or p.is_symlink()] == ["01_transformer_from_scratch.html"], files
    assert not any(p.is_symlink() for p in files)
    everything = b"".join(p.read_bytes() for p in files if p.is_file())
    for secret in (b"SQLite format", b"BEGIN HIDDEN TESTS", b"hidden=True", b"argmin"):
        assert secret not in everything, secret


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
            print(f"\n{name}: {sub.code_score:g}/{sub.max_code_score:g} autograded"
                  f" (+{sub.max_written_score:g} written, graded by hand) in {seconds:.0f} s")
            # Every autograded point; written answers (manually graded cells) wait for a human
            # in formgrader, and do not change the autograded total.
            assert sub.max_code_score >= 10 and sub.code_score == sub.max_code_score, name
            source = nbformat.read(path, 4)
            written = sum(1 for c in source.cells if c.cell_type == "markdown"
                          and c.metadata.get("nbgrader", {}).get("grade"))
            grades = [g for notebook in sub.notebooks for g in notebook.grades]
            assert len([g for g in grades if g.cell_type == "markdown"]) == written, name
            assert all(g.needs_manual_grade for g in grades if g.cell_type == "markdown"), name
            # Demonstrations train for a few steps only while grading; no cell may break on that.
            graded = nbformat.read(course / "autograded" / "reference" / name / path.name, 4)
            errors = [(c.source[:80], o.get("ename")) for c in graded.cells if c.cell_type == "code"
                      for o in c.get("outputs", []) if o.output_type == "error"]
            assert not errors, f"{name}: cells failed while grading: {errors}"
            # chapters 4 and 7 load shipped models (7 trains only probes, seconds each); 2, 3 and 5 train theirs live
            if name not in ("ch04", "ch07"):
                assert any("autograding:" in o.get("text", "") for c in graded.cells if c.cell_type == "code"
                           for o in c.get("outputs", [])), f"{name}: no demonstration said it was shortened"


@pytest.mark.slow
def test_a_busy_grading_machine_costs_no_point(tmp_path):
    """A correct chapter-1 submission keeps all 16 points with busy processes beside the grader
    (three per core): time limits count the student's computing, not the machine's load."""
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    build(course, ["01"])
    _nbgrader(course, "generate_assignment", "ch01", "--force")
    fixtures = _load_submissions()
    release = nbformat.read(course / "release" / "ch01" / "01_transformer_from_scratch.ipynb", 4)
    solution = nbformat.read(ROOT / "solutions" / "01_transformer_from_scratch.ipynb", 4)
    folder = course / "submitted" / "busy" / "ch01"
    folder.mkdir(parents=True)
    nbformat.write(fixtures.fill_in(release, solution), folder / "01_transformer_from_scratch.ipynb")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3 * (os.cpu_count() or 1))]
    try:
        start = time.monotonic()
        _nbgrader(course, "autograde", "ch01", "--student", "busy", "--force")
        print(f"\nautograde beside {len(busy)} busy processes: {time.monotonic() - start:.0f} s")
    finally:
        for p in busy:
            p.kill()
            p.wait()
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        assert gb.find_submission("ch01", "busy").score == 16.0

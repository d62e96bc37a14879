"""The course runs anywhere: Binder's set-up, Colab's set-up cell, Python 3.13.

The Colab set-up cell is executed for real (in a subprocess, as if on Colab) with git and
pip replaced by recorders, so no network is used and nothing is installed.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from utils import colab

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README = (ROOT / "README.md").read_text(encoding="utf-8")
CHAPTERS = ("01_transformer_from_scratch.ipynb", "02_induction_heads.ipynb")
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def pyproject_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return {r.name.lower(): r for r in reqs}


# --- Binder ------------------------------------------------------------------------------


def test_binder_runtime_is_a_supported_python():
    runtime = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    match = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert match, f"binder/runtime.txt should read python-3.X, got {runtime!r}"
    supported = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert Version(match.group(1)) in supported, f"{runtime} is outside requires-python {supported}"


def test_binder_installs_cpu_torch_pinned_exactly():
    lines = requirement_lines(BINDER / "requirements.txt")
    assert any(re.fullmatch(rf"--(extra-)?index-url\s+{re.escape(CPU_INDEX)}/?", ln) for ln in lines), \
        f"binder/requirements.txt must use the CPU wheel index {CPU_INDEX}"
    torch = [Requirement(ln) for ln in lines if not ln.startswith("-") and Requirement(ln).name == "torch"]
    assert len(torch) == 1, "binder/requirements.txt must list torch once"
    (spec,) = torch[0].specifier
    assert spec.operator == "==" and "*" not in spec.version, f"torch must be pinned exactly, got {spec}"
    # the same torch as ./course installs locally
    course = (ROOT / "course").read_text(encoding="utf-8")
    assert f'TORCH_SPEC:-torch=={spec.version}}}' in course, "binder and ./course pin different torch versions"


def test_pyproject_does_not_pin_torch():
    torch = pyproject_requirements()["torch"]
    assert not any(s.operator in ("==", "===", "~=") for s in torch.specifier), \
        "pyproject.toml must not pin torch (Colab and Binder bring their own build)"
    assert not any(Requirement(r).name == "torch" for extra in PYPROJECT["project"].get("optional-dependencies", {}).values()
                   for r in extra)


def test_binder_postbuild_installs_the_course_editable():
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    commands = [ln.strip() for ln in post.read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    installs = [c for c in commands if re.search(r"\bpip3? install\b", c)]
    assert any(re.search(r"(^|\s)(-e|--editable)\s+\.(\s|$)", c) for c in installs), \
        f"postBuild must install the course editable (pip install -e .): {installs}"
    assert not any("torch" in c for c in installs), "torch comes from requirements.txt only"


def test_binder_badge_opens_chapter_1():
    badge = re.search(r"\[!\[Binder\]\(https://mybinder\.org/badge_logo\.svg\)\]\(([^)\s]+)\)", README)
    assert badge, "README has no Binder badge"
    url = badge.group(1)
    assert url == colab.binder_url(), url
    target = re.search(r"[?&]urlpath=lab/tree/([^&]+)", url)
    assert target and target.group(1) == "chapters/01_transformer_from_scratch.ipynb", url
    assert (ROOT / target.group(1)).is_file()


# --- badges and the repository address ---------------------------------------------------


@pytest.mark.parametrize("name", CHAPTERS)
def test_colab_badges_open_each_chapter(name):
    url = colab.colab_url(name)
    row = next((ln for ln in README.splitlines() if ln.startswith("|") and f"chapters/{name})" in ln), None)
    assert row and f"(https://colab.research.google.com/assets/colab-badge.svg)]({url})" in row, \
        f"README's chapter table has no Colab badge for {name}"
    for folder in ("solutions", "chapters"):
        title = nbformat.read(ROOT / folder / name, as_version=4).cells[0]
        assert title.cell_type == "markdown" and f"]({url})" in title.source, \
            f"{folder}/{name}: no Colab badge in the title cell"


def test_colab_and_binder_links_all_point_at_the_course_repository():
    """(The set-up cells' copy is checked against utils.colab.cell_source() below.)"""
    slug = colab.repo_slug()
    found = []
    for path in colab.files_with_repo_url(ROOT):
        text = path.read_text(encoding="utf-8")
        for prefix in ("colab.research.google.com/github/", "mybinder.org/v2/gh/"):
            found += [(path.name, s) for s in re.findall(re.escape(prefix) + r"([\w.-]+/[\w.-]+)", text)]
    assert len(found) >= 1 + len(CHAPTERS) * 2, found  # Binder badge; Colab badges in README and title cells
    other = [(name, s) for name, s in found if s != slug]
    assert not other, f"links to another repository than {slug}: {other}"


def test_set_repo_moves_every_copy(tmp_path):
    with_url = set()
    for rel in ("utils/colab.py", "README.md", *(f"solutions/{p.name}" for p in SOLUTIONS)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
        if colab.repo_slug() in (ROOT / rel).read_text(encoding="utf-8"):
            with_url.add(Path(rel).name)
    assert {"colab.py", "README.md", *CHAPTERS} <= with_url
    changed = colab.set_repo("https://github.com/alice/mi-course.git", root=tmp_path)
    assert {p.name for p in changed} == with_url
    text = "".join(p.read_text(encoding="utf-8") for p in changed)
    assert colab.repo_slug() not in text
    assert 'COURSE_REPO_URL = "https://github.com/alice/mi-course"' in text
    assert "colab.research.google.com/github/alice/mi-course/blob/" in text
    assert "mybinder.org/v2/gh/alice/mi-course/HEAD" in text
    with pytest.raises(ValueError):
        colab.set_repo("https://gitlab.com/alice/mi-course", root=tmp_path)


# --- the Colab set-up cell ---------------------------------------------------------------


def setup_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == colab.SETUP_GRADE_ID]
    assert len(cells) == 1, (
        f"{path.name}: expected one cell with grade_id {colab.SETUP_GRADE_ID!r}, the Colab set-up. Every "
        "chapter starts with it: a code cell right after the title cell with source "
        "utils.colab.cell_source() and nbgrader metadata {grade: false, grade_id: 'colab_setup', "
        "locked: true, schema_version: 3, solution: false, task: false}; then ./course build")
    return nb, cells[0]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_setup_cell_is_the_first_code_cell_and_locked(path):
    nb, cell = setup_cell(path)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is cell, "the Colab set-up must be the first code cell"
    meta = cell.metadata["nbgrader"]
    assert meta["locked"] and not meta["solution"] and not meta["grade"], meta
    assert cell.source == colab.cell_source(), \
        "set-up cell differs from utils.colab.cell_source(): rewrite it from there, then ./course build"
    assert not cell.get("outputs")


def test_colab_packages_are_pyproject_dependencies_never_torch():
    deps = pyproject_requirements()
    for spec in colab.COLAB_PACKAGES:
        req = Requirement(spec)
        assert req.name.lower() not in ("torch", "nbgrader"), spec
        assert req.name.lower() in deps, f"{spec} is not a course dependency"
        assert req.specifier == deps[req.name.lower()].specifier, \
            f"{spec} should have pyproject's bound {deps[req.name.lower()]}"
    assert {Requirement(s).name for s in colab.COLAB_PACKAGES} >= {"circuitsvis", "plotly", "safetensors", "einops"}


# A stand-in for Colab: runs the cell's source with `google.colab` importable or not, with
# subprocess.run recording every command (a `git clone` copies a small fake checkout instead),
# and every other way of starting a process forbidden. Prints what happened as JSON.
HARNESS = textwrap.dedent(r'''
    import json, os, shutil, subprocess, sys, types

    cell, fake_checkout, on_colab, runs = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    calls, constraints = [], []

    def fake_run(args, *a, **kw):
        args = [os.fspath(x) for x in args]
        calls.append(args)
        if args[:2] == ["git", "clone"]:
            shutil.copytree(fake_checkout, args[-1])
        elif args[1:4] == ["-m", "pip", "install"] and "-c" in args:
            with open(args[args.index("-c") + 1]) as fh:
                constraints.append(fh.read())
        elif args[1:4] != ["-m", "pip", "install"]:
            raise AssertionError(f"unexpected command {args}")
        return subprocess.CompletedProcess(args, 0, "", "")

    def forbidden(*a, **kw):
        calls.append(["FORBIDDEN", repr(a)])
        raise AssertionError(f"only subprocess.run is expected, got {a}")

    subprocess.run = fake_run
    subprocess.Popen = subprocess.call = subprocess.check_call = subprocess.check_output = forbidden
    os.system = forbidden
    if on_colab:
        google = types.ModuleType("google")
        google.colab = types.ModuleType("google.colab")
        sys.modules.update({"google": google, "google.colab": google.colab})

    start_cwd, start_path = os.getcwd(), list(sys.path)
    source = open(cell).read()
    for _ in range(runs):  # learners re-run cells
        exec(compile(source, "<colab-setup-cell>", "exec"), {"__name__": "__main__"})
    mod = sys.modules.get("utils.colab")
    print(json.dumps({
        "calls": calls, "constraints": constraints, "start_cwd": start_cwd, "cwd": os.getcwd(),
        "path_changed": sys.path != start_path, "path_head": sys.path[:2],
        "imported": getattr(mod, "__file__", None), "utils_imported": "utils" in sys.modules,
    }))
''')


PUBLISHED = "https://github.com/alice/mi-course"  # a published copy (set-repo or ./course build in a clone)


def run_cell(path: Path, tmp_path: Path, on_colab: bool, runs: int = 1, repo_url: str | None = PUBLISHED,
             expect_ok: bool = True) -> tuple[dict, Path]:
    """Run the notebook's set-up cell in a fresh interpreter, with /content moved to tmp_path
    and the repository address replaced by ``repo_url`` (None: keep the placeholder)."""
    _, cell = setup_cell(path)
    content = tmp_path / "content"
    course_dir = content / "mechinterp-course"
    literal = json.dumps(colab.COLAB_DIR)
    assert cell.source.count(literal) == 1, f"expected {literal} once in the set-up cell"
    source = cell.source.replace(literal, json.dumps(str(course_dir)))
    if repo_url:
        assert source.count(json.dumps(colab.COURSE_REPO_URL)) == 1
        source = source.replace(json.dumps(colab.COURSE_REPO_URL), json.dumps(repo_url))
    (tmp_path / "cell.py").write_text(source, encoding="utf-8")
    (tmp_path / "harness.py").write_text(HARNESS, encoding="utf-8")
    # What the clone would contain, as far as the cell and utils/colab.py care.
    fake = tmp_path / "checkout"
    (fake / "utils").mkdir(parents=True)
    (fake / "chapters").mkdir()
    for name in ("__init__.py", "colab.py"):
        shutil.copy(ROOT / "utils" / name, fake / "utils" / name)
    content.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "harness.py"), str(tmp_path / "cell.py"), str(fake),
         "1" if on_colab else "0", str(runs)],
        cwd=content, env=env, capture_output=True, text=True, timeout=120)
    if not expect_ok:
        return {"returncode": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout}, course_dir
    assert proc.returncode == 0, f"the set-up cell failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), course_dir


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_setup_cell_on_colab_installs_the_course_but_never_torch(path, tmp_path):
    result, course_dir = run_cell(path, tmp_path, on_colab=True, runs=2)
    calls = result["calls"]
    git = [c for c in calls if c[0] == "git"]
    pip = [c for c in calls if c[1:3] == ["-m", "pip"]]
    assert not [c for c in calls if c[0] == "FORBIDDEN"], calls
    # cloned once (the second run finds the clone), from the constant, into the course folder
    assert len(git) == 1, git
    assert git[0][:2] == ["git", "clone"] and PUBLISHED in git[0] and git[0][-1] == str(course_dir)
    # pip: the course itself editable without its dependencies, then the listed packages
    assert pip, "nothing was installed"
    for args in pip:
        assert args[0] == sys.executable, "pip must run in the kernel's own interpreter"
        assert not [a for a in args if "torch" in a.lower()], f"pip must never be asked for torch: {args}"
    course = [a for a in pip if str(course_dir) in a]
    assert course and all("--no-deps" in a and a[a.index(str(course_dir)) - 1] in ("-e", "--editable")
                          for a in course), course
    extras = [a for a in pip if str(course_dir) not in a]
    assert extras and all(set(colab.COLAB_PACKAGES) <= set(a) for a in extras), extras
    # ... under a constraint that keeps the torch already installed
    from importlib.metadata import version
    assert result["constraints"] and all(c.strip() == f"torch=={version('torch')}" for c in result["constraints"])
    # the course was imported from the clone, and the learner ends up in its chapters folder
    assert result["imported"] == str(course_dir / "utils" / "colab.py")
    assert result["path_head"][0] == str(course_dir) and result["path_head"][1] != str(course_dir)
    assert Path(result["cwd"]) == course_dir / "chapters"


def test_setup_cell_with_the_placeholder_address_says_what_to_do(tmp_path):
    assert colab.is_placeholder(), "this test is about an unpublished copy"
    result, course_dir = run_cell(SOLUTIONS[0], tmp_path, on_colab=True, repo_url=None, expect_ok=False)
    assert result["returncode"] != 0
    assert "COURSE_REPO_URL above is still the placeholder" in result["stderr"], result["stderr"]
    assert "run this cell again" in result["stderr"] and "set-repo" in result["stderr"]
    assert "git" not in result["stdout"] and not course_dir.exists(), "nothing is cloned"


def _git_clone_with_origin(tmp_path: Path, origin: str) -> Path:
    root = tmp_path / "clone"
    for rel in ("utils/colab.py", "README.md", *(f"solutions/{p.name}" for p in SOLUTIONS)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, root / rel)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "remote", "add", "origin", origin], check=True)
    return root


@pytest.mark.parametrize("origin", ["https://github.com/bob/course.git", "git@github.com:bob/course.git",
                                    "ssh://git@github.com/bob/course"])
def test_build_in_a_github_clone_adopts_its_origin(tmp_path, origin):
    root = _git_clone_with_origin(tmp_path, origin)
    url, changed = colab.adopt_origin(root)
    assert url == "https://github.com/bob/course"
    assert {p.name for p in changed} >= {"colab.py", "README.md", *CHAPTERS}
    text = (root / "README.md").read_text(encoding="utf-8")
    assert "mybinder.org/v2/gh/bob/course/HEAD" in text and "/OWNER/" not in text
    assert colab.adopt_origin(root) is None, "an address already set is left alone"


def test_build_elsewhere_leaves_the_placeholder(tmp_path):
    root = _git_clone_with_origin(tmp_path, "/srv/git/course.git")  # a CI clone from a local path
    assert colab.adopt_origin(root) is None
    assert colab.is_placeholder(colab._current_url(root))


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_setup_cell_does_nothing_outside_colab(path, tmp_path):
    result, course_dir = run_cell(path, tmp_path, on_colab=False)
    assert result["calls"] == [], "outside Colab the set-up cell must not run anything"
    assert result["cwd"] == result["start_cwd"]
    assert not result["path_changed"] and not result["utils_imported"]
    assert not course_dir.exists()


# --- Python 3.13 -------------------------------------------------------------------------


def python313() -> str | None:
    """A working Python 3.13 (pyenv's shim on PATH may exist without one being selected)."""
    candidates = [*sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13"))),
                  shutil.which("python3.13")]
    for exe in filter(None, candidates):
        probe = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return exe
    return None


def test_utils_compile_and_import_only_stdlib_that_exists_on_python_3_13():
    exe = python313()
    if exe is None:
        pytest.skip("no python3.13 interpreter found")
    sources = sorted((ROOT / "utils").rglob("*.py"))
    # syntax: compile every file with 3.13 (in memory: nothing is written)
    script = ("import sys\nfor p in sys.argv[1:]:\n    compile(open(p, encoding='utf-8').read(), p, 'exec')\n"
              "print(' '.join(sorted(sys.stdlib_module_names)))")
    proc = subprocess.run([exe, "-c", script, *map(str, sources)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stdlib_313 = set(proc.stdout.split())
    # standard-library modules imported by utils/ that 3.13 no longer has (PEP 594 removals, ...)
    missing = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names and top not in stdlib_313:
                    missing.add(f"{path.relative_to(ROOT)}: {top}")
    assert not missing, f"removed from the standard library in 3.13: {sorted(missing)}"

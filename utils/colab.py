"""Set-up for Google Colab, run by the first code cell of every chapter (and only on Colab).

Colab opens one notebook from GitHub, without the rest of the repository, in a runtime that
already has its own PyTorch (often a CUDA build). So the first code cell of each chapter
(``cell_source()`` below; identical in every chapter) does, when ``google.colab`` is imported:

1. ``git clone`` COURSE_REPO_URL into /content/mechinterp-course (skipped when already there);
2. imports this module from the clone (standard library only, so it works before the course
   is installed) and calls ``setup_course``, which
   - pip-installs the course editable with ``--no-deps``: its dependency list is for a laptop
     (JupyterLab, nbgrader, ...) and must not touch Colab's torch;
   - pip-installs the few packages Colab lacks or has too old (COLAB_PACKAGES), under a
     constraint that pins torch to the version already installed, so pip can never replace it;
   - puts the clone first on ``sys.path`` (a running kernel does not see a new editable install)
     and changes into its ``chapters/`` folder, so paths in the chapters work as they do locally.

Anywhere else the cell does nothing.

The repository's address is set here, in COURSE_REPO_URL, and copied into the set-up cells and
the Colab/Binder badges (README.md, the chapters' title cells). To point everything at another
repository or fork::

    .venv/bin/python -m utils.colab set-repo https://github.com/YOU/REPO
    ./course build
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

COURSE_REPO_URL = "https://github.com/OWNER/mechinterp-course"
BRANCH = "main"  # the branch Colab badges open (Binder badges follow the default branch)
COLAB_DIR = "/content/mechinterp-course"  # where the set-up cell clones the course on Colab

# What the chapters need that Colab lacks or has in an older version (same lower bounds as
# pyproject.toml). Never torch: Colab's own build stays.
COLAB_PACKAGES = ("circuitsvis>=1.43", "plotly>=7.1", "safetensors>=0.4", "einops>=0.7")

SETUP_GRADE_ID = "colab_setup"  # nbgrader grade_id of the set-up cell in every chapter

_CELL = '''\
# Google Colab only (does nothing anywhere else): get the course and the few packages Colab
# lacks, keeping Colab's own torch. What it does and why: README.md, "Run it on Colab".
import sys
if "google.colab" in sys.modules:
    import os, subprocess
    COURSE_REPO_URL, COURSE_DIR = "{url}", "{dir}"
    if "/OWNER/" in COURSE_REPO_URL:  # this copy was never told its own address
        raise RuntimeError("COURSE_REPO_URL above is still the placeholder, so there is nothing to clone. "
                           "Replace it with the address of the GitHub repository you opened this notebook "
                           "from (https://github.com/NAME/REPO) and run this cell again. Maintainers: run "
                           "`./course build` in a clone whose origin is on GitHub, or `python -m utils.colab "
                           "set-repo URL`, and push.")
    if not os.path.isdir(COURSE_DIR):
        subprocess.run(["git", "clone", "--quiet", "--depth=1", COURSE_REPO_URL, COURSE_DIR], check=True)
    sys.path.insert(0, COURSE_DIR)
    from utils.colab import setup_course
    setup_course(COURSE_DIR)'''


def cell_source(repo_url: str = COURSE_REPO_URL, course_dir: str = COLAB_DIR) -> str:
    """The source of the set-up cell that starts every chapter."""
    return _CELL.format(url=repo_url, dir=course_dir)


# --- on Colab -------------------------------------------------------------------------


def _pip_install(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True)


def _keep_torch_constraint() -> str:
    """A pip constraints file pinning torch to the installed version; returns its path."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            "torch is not installed in this runtime, and the set-up does not install it (Colab "
            "always has one). Use Runtime > Disconnect and delete runtime, then run this cell "
            "again.") from None
    fd, path = tempfile.mkstemp(prefix="course-keep-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"torch=={version}\n")
    return path


def setup_course(course_dir: str = COLAB_DIR) -> None:
    """Install the cloned course into this runtime and change into its chapters/ folder."""
    course_dir = os.path.abspath(course_dir)
    keep = _keep_torch_constraint()
    try:
        _pip_install("--no-deps", "-e", course_dir)
        _pip_install("-c", keep, *COLAB_PACKAGES)
    finally:
        os.unlink(keep)
    while course_dir in sys.path:
        sys.path.remove(course_dir)
    sys.path.insert(0, course_dir)
    os.chdir(os.path.join(course_dir, "chapters"))
    print(f"The course is installed from {course_dir}; working folder: {os.getcwd()}")


# --- for maintainers: move every copy of the repository address -----------------------

_URL = re.compile(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?")
# Where the owner/name of the repository appears in links.
_PREFIXES = ("github.com/", "colab.research.google.com/github/", "mybinder.org/v2/gh/")


def repo_slug(url: str = COURSE_REPO_URL) -> str:
    """"owner/name" of a https://github.com/owner/name URL."""
    match = _URL.fullmatch(url)
    if not match:
        raise ValueError(f"expected https://github.com/OWNER/NAME, got {url!r}")
    return match.group(1)


def colab_url(notebook: str, repo_url: str = COURSE_REPO_URL) -> str:
    """Colab's address for chapters/<notebook> in the repository."""
    return f"https://colab.research.google.com/github/{repo_slug(repo_url)}/blob/{BRANCH}/chapters/{notebook}"


def binder_url(repo_url: str = COURSE_REPO_URL) -> str:
    """Binder's address for the repository, opening JupyterLab on chapter 1."""
    return (f"https://mybinder.org/v2/gh/{repo_slug(repo_url)}/HEAD"
            "?urlpath=lab/tree/chapters/01_transformer_from_scratch.ipynb")


def files_with_repo_url(root: Path) -> list[Path]:
    """Every file that holds a copy of the repository address."""
    return [root / "utils" / "colab.py", root / "README.md", *sorted((root / "solutions").glob("*.ipynb"))]


def set_repo(new_url: str, root: Path | None = None) -> list[Path]:
    """Replace the repository address everywhere it is copied; returns the files changed."""
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    new_url = new_url.rstrip("/").removesuffix(".git")
    new, old = repo_slug(new_url), repo_slug(_current_url(root))
    changed = []
    for path in files_with_repo_url(root):
        text = path.read_text(encoding="utf-8")
        updated = text
        for prefix in _PREFIXES:
            updated = updated.replace(prefix + old, prefix + new)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            changed.append(path)
    return changed


_REMOTE = re.compile(r"(?:https://|ssh://git@|git@)github\.com[:/]([\w.-]+)/([\w.-]+?)(?:\.git)?/?")


def is_placeholder(url: str = COURSE_REPO_URL) -> bool:
    return repo_slug(url).split("/")[0] == "OWNER"


def origin_url(root: Path) -> str | None:
    """https://github.com/owner/name of the git clone's ``origin``, when it is on GitHub."""
    try:
        out = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _REMOTE.fullmatch(out.stdout.strip()) if out.returncode == 0 else None
    return f"https://github.com/{match.group(1)}/{match.group(2)}" if match else None


def adopt_origin(root: Path | None = None) -> tuple[str, list[Path]] | None:
    """If the address is still the placeholder and this is a clone of a GitHub repository,
    point every copy at that repository (``./course build`` does this). Returns (url, files
    changed), or None when nothing was done."""
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    if not is_placeholder(_current_url(root)):
        return None
    url = origin_url(root)
    if url is None:
        return None
    return url, set_repo(url, root=root)


def _current_url(root: Path) -> str:
    source = (root / "utils" / "colab.py").read_text(encoding="utf-8")
    return re.search(r'^COURSE_REPO_URL = "([^"]+)"', source, re.M).group(1)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m utils.colab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("set-repo", help="point the Colab set-up cells and the Colab/Binder badges "
                                          "at another GitHub repository")
    cmd.add_argument("url", help="https://github.com/OWNER/NAME")
    args = parser.parse_args(argv)
    try:
        changed = set_repo(args.url)
    except ValueError as e:
        parser.error(str(e))
    for path in changed:
        print(f"updated {path}")
    print("now run ./course build to regenerate chapters/" if changed else "nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generate the learner notebooks (``chapters/``) from the source notebooks (``solutions/``).

``solutions/NN_name.ipynb`` are nbgrader *source* notebooks and the only notebooks anyone
edits by hand. This module turns each one into ``chapters/NN_name.ipynb`` with nbgrader's
own preprocessors (the ones ``nbgrader generate_assignment`` runs), applied directly with
nbformat, so no course directory or gradebook database is needed:

* ``LockCells``         solution cells undeletable; check and read-only cells undeletable and
                        uneditable (``deletable``/``editable`` cell metadata)
* ``ClearSolutions``    ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` becomes
                        ``# YOUR CODE HERE`` / ``raise NotImplementedError()``
* ``ClearOutput``       no outputs, no execution counts
* ``ClearHiddenTests``  ``### BEGIN HIDDEN TESTS`` regions removed
* ``ClearMarkScheme``   ``### BEGIN MARK SCHEME`` regions removed
* ``ComputeChecksums``  nbgrader checksums of the *released* cells (what ``nbgrader
                        validate`` and autograding compare against)
* ``CheckCellMetadata`` nbgrader's own metadata validation of the result

Usage::

    python -m utils.build                  # rebuild every chapter (./course build)
    python -m utils.build 01_foo.ipynb     # only these (names or paths in solutions/)
    python -m utils.build --check          # exit 1 if chapters/ is not what a build gives
    python -m utils.build --force          # also overwrite files the build did not write

Generated notebooks carry ``metadata.course = {"generated_from": "solutions/NAME.ipynb",
"do_not_edit": true, "sha256": ...}``; the hash is of the notebook as written, so the build
can tell a chapter it wrote from one that was edited (or run) since. It never overwrites a
file without the marker, nor a marked one that was changed, unless given ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader import utils as nbgrader_utils
from nbgrader.nbgraderformat import MetadataValidator
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    LockCells,
)
from traitlets.config import Config

try:  # added in nbgrader 0.8
    from nbgrader.preprocessors import ClearMarkScheme
except ImportError:  # pragma: no cover
    ClearMarkScheme = None

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "solutions"
OUTPUT_DIR = ROOT / "chapters"

MARKER = "course"

# Cell metadata worth keeping in a chapter; everything else (execution timings, collapsed,
# scrolled, ExecuteTime, editor state, ...) is noise.
KEEP_CELL_METADATA = {"nbgrader", "deletable", "editable", "tags", "slideshow"}
KEEP_JUPYTER_CELL_METADATA = {"source_hidden"}
# Notebook metadata worth keeping; widget state, celltoolbar, editor state etc. are dropped.
KEEP_NOTEBOOK_METADATA = {"kernelspec", "language_info"}
DROP_LANGUAGE_INFO = {"version"}  # the author's exact Python version: churn only


class BuildError(Exception):
    """A problem with a source notebook or with the output directory."""


def _config() -> Config:
    cfg = Config()
    cfg.ClearSolutions.code_stub = dict(python="# YOUR CODE HERE\nraise NotImplementedError()")
    cfg.ClearSolutions.text_stub = "YOUR ANSWER HERE"
    cfg.ClearSolutions.enforce_metadata = True
    cfg.ClearHiddenTests.enforce_metadata = True
    cfg.ClearOutput.remove_metadata_fields = {"collapsed", "scrolled", "execution", "ExecuteTime"}
    cfg.LockCells.lock_solution_cells = True
    cfg.LockCells.lock_grade_cells = True
    cfg.LockCells.lock_readonly_cells = True
    cfg.LockCells.lock_all_cells = False
    if ClearMarkScheme is not None:
        cfg.ClearMarkScheme.enforce_metadata = True
    return cfg


def _preprocessors() -> list:
    cfg = _config()
    classes = [LockCells, ClearSolutions, ClearOutput, ClearHiddenTests]
    if ClearMarkScheme is not None:
        classes.append(ClearMarkScheme)
    classes += [ComputeChecksums, CheckCellMetadata]
    return [cls(config=cfg) for cls in classes]


# --------------------------------------------------------------------------------------
# validation of a source notebook


def _regions() -> list[tuple[str, str, str, Callable, str]]:
    """(name, begin, end, cell predicate, what the cell must be) for each delimited region,
    with the delimiters nbgrader itself is configured with."""
    cfg = _config()
    cs = ClearSolutions(config=cfg)
    ht = ClearHiddenTests(config=cfg)
    out = [
        ("solution", cs.begin_solution_delimeter, cs.end_solution_delimeter,
         nbgrader_utils.is_solution,
         "a solution cell (nbgrader metadata \"solution\": true)"),
        ("hidden tests", ht.begin_test_delimeter, ht.end_test_delimeter,
         nbgrader_utils.is_grade,
         "a graded test cell (nbgrader metadata \"grade\": true)"),
    ]
    if ClearMarkScheme is not None:
        ms = ClearMarkScheme(config=cfg)
        out.append(("mark scheme", ms.begin_mark_scheme_delimeter, ms.end_mark_scheme_delimeter,
                    nbgrader_utils.is_task, "a task cell (nbgrader metadata \"task\": true)"))
    return out


def _describe(nb, index: int) -> str:
    cell = nb.cells[index]
    meta = cell.metadata.get("nbgrader", {})
    bits = [f"cell {index} ({cell.cell_type}"]
    if meta.get("grade_id"):
        bits.append(f", grade_id {meta['grade_id']!r}")
    first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
    if first:
        bits.append(f", starts {first[:50]!r}")
    return "".join(bits) + ")"


def validate_source(nb, label: str) -> list[str]:
    """Every problem with a source notebook, as ``label: cell N (...): message`` lines."""
    errors: list[str] = []

    def err(index: int | None, msg: str) -> None:
        where = f"{label}: {_describe(nb, index)}" if index is not None else label
        errors.append(f"{where}: {msg}")

    language = nb.metadata.get("kernelspec", {}).get("language", "python")
    if language != "python":
        err(None, f"kernelspec language is {language!r}; the build only knows Python stubs")

    regions = _regions()
    validator = MetadataValidator()
    seen_ids: dict[str, int] = {}

    for i, cell in enumerate(nb.cells):
        # stored outputs: authors clear them before committing
        if cell.cell_type == "code":
            if cell.get("outputs"):
                err(i, "has stored outputs; clear all outputs in the solutions notebook and save it")
            elif cell.get("execution_count") is not None:
                err(i, f"has an execution count ({cell.execution_count}); clear all outputs "
                       "in the solutions notebook and save it")
            if "AUTOTEST" in cell.source:
                err(i, "uses nbgrader AUTOTEST, which needs a live kernel at build time and "
                       "is not supported here; write the asserts out")

        # delimited regions, with the same substring matching nbgrader uses
        for name, begin, end, is_kind, kind_desc in regions:
            depth_open = None  # line number of the open BEGIN
            found = False
            for lineno, line in enumerate(cell.source.split("\n"), 1):
                if begin in line:
                    if depth_open is not None:
                        err(i, f"nested {begin!r} on line {lineno} (the one on line "
                               f"{depth_open} is not closed)")
                    depth_open = lineno
                    found = True
                elif end in line:
                    if depth_open is None:
                        err(i, f"{end!r} on line {lineno} without a {begin!r} before it")
                    depth_open = None
            if depth_open is not None:
                err(i, f"{begin!r} on line {depth_open} without a matching {end!r}")
            if found and not is_kind(cell):
                err(i, f"{name} region in a cell that is not {kind_desc}")

        # nbgrader metadata: schema, and unique grade ids
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            continue
        try:
            validator.validate_cell(cell)
        except Exception as e:  # jsonschema / nbgrader ValidationError, SchemaMismatchError
            msg = getattr(e, "message", None) or str(e).splitlines()[0]
            err(i, f"invalid nbgrader metadata: {msg}")
            continue
        if meta.get("grade") or meta.get("solution") or meta.get("locked"):
            gid = meta.get("grade_id")
            if gid in seen_ids:
                err(i, f"duplicate grade_id {gid!r} (also used by cell {seen_ids[gid]})")
            else:
                seen_ids[gid] = i
    return errors


# --------------------------------------------------------------------------------------
# building


def _clean_metadata(nb) -> None:
    for cell in nb.cells:
        md = cell.metadata
        jupyter = {k: v for k, v in md.get("jupyter", {}).items() if k in KEEP_JUPYTER_CELL_METADATA}
        for key in list(md):
            if key not in KEEP_CELL_METADATA:
                del md[key]
        if jupyter:
            md["jupyter"] = jupyter
        if "attachments" in cell and not cell.attachments:
            del cell["attachments"]
    md = nb.metadata
    for key in list(md):
        if key not in KEEP_NOTEBOOK_METADATA:
            del md[key]
    if "language_info" in md:
        for key in DROP_LANGUAGE_INFO:
            md.language_info.pop(key, None)


def _serialize(nb) -> str:
    text = nbformat.writes(nb, version=4)  # sorted keys, indent 1: deterministic
    return text if text.endswith("\n") else text + "\n"


def _content_hash(nb) -> str:
    """sha256 of the notebook as serialized, without the hash field itself."""
    nb = copy.deepcopy(nb)
    nb.metadata.get(MARKER, {}).pop("sha256", None)
    return hashlib.sha256(_serialize(nb).encode("utf-8")).hexdigest()


def _read(path: Path):
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as e:
        raise BuildError(f"{path}: not a readable notebook: {e}") from e


def build_notebook(src_path, *, generated_from: str | None = None) -> nbformat.NotebookNode:
    """The learner notebook built from one source notebook (in memory; nothing is written).

    Raises BuildError listing every problem when the source is invalid.
    """
    src_path = Path(src_path)
    label = generated_from or f"{src_path.parent.name}/{src_path.name}"
    nb = _read(src_path)  # a fresh copy: the source file is never written
    errors = validate_source(nb, label)
    if errors:
        raise BuildError("\n".join(errors))

    resources: dict = {"metadata": {"path": str(src_path.parent)}}
    for pp in _preprocessors():
        try:
            nb, resources = pp.preprocess(nb, resources)
        except Exception as e:  # validation above should make this unreachable
            raise BuildError(f"{label}: nbgrader {type(pp).__name__} failed: {e}") from e

    _clean_metadata(nb)
    nb.metadata[MARKER] = {"generated_from": label, "do_not_edit": True}
    nb.metadata[MARKER]["sha256"] = _content_hash(nb)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        raise BuildError(f"{label}: built notebook is not valid nbformat: {e.message}") from e
    return nb


def render_notebook(src_path, *, generated_from: str | None = None) -> str:
    """The exact text ``build`` writes for one source notebook."""
    return _serialize(build_notebook(src_path, generated_from=generated_from))


def _existing_state(path: Path) -> str:
    """'absent', 'generated' (written by the build, unchanged since), 'modified' (written by
    the build, changed since), or 'foreign' (not written by the build, or not a notebook)."""
    if not path.exists() and not path.is_symlink():
        return "absent"
    if path.is_symlink() or not path.is_file():
        return "foreign"
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:
        return "foreign"
    marker = nb.metadata.get(MARKER)
    if not isinstance(marker, dict) or not marker.get("generated_from"):
        return "foreign"
    if marker.get("sha256") != _content_hash(nb):
        return "modified"
    return "generated"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class Plan:
    """What a build would do: the text for each output, and everything found wrong."""

    outputs: dict[str, str] = field(default_factory=dict)  # chapter file name -> text
    errors: list[str] = field(default_factory=list)


def _select_sources(src_dir: Path, names: list[str] | None) -> list[Path]:
    if not names:
        return sorted(p for p in src_dir.glob("*.ipynb") if p.is_file())
    paths = []
    for name in names:
        p = Path(name)
        if p.parent != Path(".") and p.resolve().parent != src_dir.resolve():
            raise BuildError(f"{name}: not in {src_dir}; only notebooks in the source "
                             "directory can be built")
        base = p.name if p.suffix == ".ipynb" else p.name + ".ipynb"
        full = src_dir / base
        if not full.is_file():
            raise BuildError(f"{name}: no such source notebook {full}")
        paths.append(full)
    return paths


def plan_build(src_dir: Path = SOURCE_DIR, names: list[str] | None = None) -> Plan:
    """Build every selected source in memory."""
    src_dir = Path(src_dir)
    plan = Plan()
    for src in _select_sources(src_dir, names):
        try:
            plan.outputs[src.name] = render_notebook(src, generated_from=f"{src_dir.name}/{src.name}")
        except BuildError as e:
            plan.errors.append(str(e))
    return plan


def check(src_dir: Path = SOURCE_DIR, out_dir: Path = OUTPUT_DIR) -> list[str]:
    """Problems that make ``out_dir`` differ from what a build of ``src_dir`` gives
    (an empty list when it is up to date). Files in ``out_dir`` that the build did not
    write and that no source would produce are left alone and not reported."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    plan = plan_build(src_dir)
    problems = list(plan.errors)
    for name, text in plan.outputs.items():
        target = out_dir / name
        if not target.exists():
            problems.append(f"missing: {target} (run ./course build)")
        elif target.read_text(encoding="utf-8") != text:
            state = _existing_state(target)
            if state == "modified":
                problems.append(
                    f"edited: {target} was edited or run since it was generated. If that is your work, keep it:"
                    " `./course build` will not overwrite it. To get the new version, move your copy away"
                    " (or `git stash`), then run ./course build; `./course build --force` discards your edits")
            elif state == "foreign":
                problems.append(f"foreign: {target} exists but was not generated by the build "
                                "(move it away, then run ./course build)")
            else:
                problems.append(f"stale: {target} is out of date (run ./course build)")
    for name in _orphans(src_dir, out_dir):
        problems.append(f"extra: {out_dir / name} was generated from {src_dir.name}/{name}, "
                        "which no longer exists (delete it, or ./course build --prune)")
    return problems


def _orphans(src_dir: Path, out_dir: Path) -> list[str]:
    """Generated chapters whose source notebook is gone."""
    if not out_dir.is_dir():
        return []
    found = []
    for p in sorted(out_dir.glob("*.ipynb")):
        if (src_dir / p.name).exists() or _existing_state(p) not in ("generated", "modified"):
            continue
        found.append(p.name)
    return found


def build(src_dir: Path = SOURCE_DIR, out_dir: Path = OUTPUT_DIR, names: list[str] | None = None,
          *, force: bool = False, prune: bool = False, log=print) -> list[Path]:
    """Build into ``out_dir``; returns the files written. Validates and builds everything
    in memory first, so an invalid source or a refused target means nothing is written."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if out_dir.resolve() == src_dir.resolve():
        raise BuildError("the output directory must not be the source directory")
    plan = plan_build(src_dir, names)
    if plan.errors:
        raise BuildError("\n".join(plan.errors))

    refused = []
    for name in plan.outputs:
        target = out_dir / name
        state = _existing_state(target)
        if state == "foreign" and not force:
            refused.append(f"{target} exists but was not generated by the build (no "
                           f"metadata.{MARKER}.generated_from marker); move it away or use --force")
        elif state == "modified" and not force:
            refused.append(f"{target} was edited or run since it was generated; move it away "
                           "(to keep the changes) or use --force to overwrite it")
    if refused:
        raise BuildError("refusing to overwrite:\n" + "\n".join(refused))

    if not plan.outputs:
        log(f"no source notebooks in {src_dir}; nothing to build")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in plan.outputs.items():
        target = out_dir / name
        if target.is_file() and not target.is_symlink() and target.read_text(encoding="utf-8") == text:
            log(f"up to date  {target.relative_to(out_dir.parent)}")
            continue
        if target.is_symlink():
            target.unlink()  # only reached with --force
        _atomic_write(target, text)
        written.append(target)
        log(f"wrote       {target.relative_to(out_dir.parent)}")

    if not names:
        for name in _orphans(src_dir, out_dir):
            target = out_dir / name
            if prune:
                target.unlink()
                log(f"removed     {target.relative_to(out_dir.parent)} (its source is gone)")
            else:
                log(f"warning: {target} was generated from {src_dir.name}/{name}, which no "
                    "longer exists; use --prune to delete it")
    return written


def _adopt_origin() -> None:
    """A fresh clone of a published fork: its badges and Colab set-up cells still name the
    placeholder repository; point them at the clone's own GitHub ``origin``."""
    from utils import colab

    adopted = colab.adopt_origin(SOURCE_DIR.parent)
    if adopted:
        url, changed = adopted
        print(f"the Colab/Binder badges and set-up cells now point at {url} (this clone's origin): "
              f"updated {', '.join(str(p.relative_to(SOURCE_DIR.parent)) for p in changed)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.build",
        description="Generate chapters/*.ipynb (learner notebooks) from solutions/*.ipynb.")
    parser.add_argument("notebooks", nargs="*",
                        help="source notebooks to build (names or paths in the source directory); "
                             "default: all")
    parser.add_argument("--check", action="store_true",
                        help="build in memory only; exit 1 listing missing/stale/extra chapters")
    parser.add_argument("--force", action="store_true",
                        help="overwrite chapter files the build did not write, or that were edited")
    parser.add_argument("--prune", action="store_true",
                        help="delete generated chapters whose source notebook is gone")
    parser.add_argument("--src", type=Path, default=SOURCE_DIR, metavar="DIR",
                        help="source notebooks directory (default: solutions/)")
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR, metavar="DIR",
                        help="output directory (default: chapters/)")
    args = parser.parse_args(argv)

    try:
        if args.check:
            if args.notebooks:
                parser.error("--check always checks every notebook; give no names")
            problems = check(args.src, args.out)
            if problems:
                print(f"{args.out.name}/ is not up to date with {args.src.name}/:", file=sys.stderr)
                for p in problems:
                    print(f"  {p}", file=sys.stderr)
                return 1
            print(f"{args.out.name}/ is up to date with {args.src.name}/")
            return 0
        if Path(args.src).resolve() == SOURCE_DIR.resolve():
            _adopt_origin()
        build(args.src, args.out, args.notebooks or None, force=args.force, prune=args.prune)
        return 0
    except BuildError as e:
        print(f"build failed:\n{e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

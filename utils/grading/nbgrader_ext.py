"""nbgrader preprocessors that make autograding robust and unfakeable.

They are wired into ``nbgrader autograde`` and ``generate_feedback`` by ``nbgrader_config.py``
(in this folder, copied into every course directory ``python -m utils.grading build`` writes)::

    sanitizing:   ..., RestoreCells (instead of OverwriteCells), CheckCellMetadata
    autograding:  PrepareGrading -> ResilientExecute -> JudgeChecks -> (nbgrader's own: SaveAutoGrades, ...)
    feedback:     GetGrades, ClearHiddenTests, OnlyFeedback, ...

How a check cell is graded:

1. ``ResilientExecute`` runs each of the course's check cells with a one-time token (and, for
   hidden tests, a fresh seed) added to its ``check(...)`` calls; nothing of either exists in the
   kernel before that cell runs, and nothing is in its files or environment.
2. In the kernel, ``check`` runs the learner's code and publishes the outputs as that cell's own
   display output (``record.MIME``). The moment the cell finishes, ``ResilientExecute`` takes
   the records out of its outputs: a later cell cannot rewrite, add or remove one. A record
   anywhere else, a second one, or one without the token is a forgery.
3. After every cell, ``ResilientExecute`` asks the kernel (``probe``) whether torch's functions,
   the checker or the display channel differ from when it started: a check that runs while they
   do is flagged, with the cell and line that changed them, and gets no credit. Nothing else
   costs a point: names in the source (``model.eval()``, ``re.compile``) never do.
4. ``JudgeChecks`` (in this process, where the learner's code never ran) judges each record
   against the reference, detects copies of the reference (``copies``), writes the verdicts
   into the check cells and a review list for the instructor.

The kernel runs in a scratch copy of the submission's folder (nothing it writes reaches
``autograded/`` or ``feedback/``), in a sandbox as an unprivileged user when available (``kernel``).
"""

from __future__ import annotations

import ast
import copy
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import Execute, NbGraderPreprocessor, OverwriteCells
from traitlets import Integer, Unicode

from . import ENV
from . import record as records
from .detect import learner_cells, locate, reference_uses, review_in_source
from .judge import Verdict, checks_in, grade_payloads, tamper_verdict
from .probe import EXPRESSION as PROBE_EXPRESSION

_SESSION_KEY = "course_grading"
_RESTORED_KEY = "course_grading_restored"
_DEAD = object()  # the probe's answer when the kernel has died
_ENV_KEYS = (ENV, "JUPYTER_RUNTIME_DIR", "COURSE_GRADING_NOTEBOOK_DIR")
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def _copy_regular_files(source: Path, target: Path) -> None:
    """Copy ``source``'s regular files and folders into ``target``; never follow a symlink."""
    for entry in os.scandir(source):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and entry.name != ".course_grading":
            (target / entry.name).mkdir(exist_ok=True)
            _copy_regular_files(Path(entry.path), target / entry.name)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(entry.path, target / entry.name, follow_symlinks=False)


def remove_links(folder: Path) -> list[str]:
    """Delete every symlink and special file under ``folder`` (not following links); return them."""
    removed = []
    if not folder.is_dir() or folder.is_symlink():
        return removed
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                path.unlink()
                removed.append(str(path.relative_to(folder)))
    return removed


class PrepareGrading(NbGraderPreprocessor):
    """Before the kernel starts: a scratch copy of the submission's folder for the kernel to work
    in, a private runtime folder for its connection file (the sandbox shares only those two), and
    the grading flag in the environment the kernel inherits (no secret: there is none to share).

    It also cleans the graded folder: nbgrader copied the submission's other files there
    (following symlinks, as ``shutil.copy`` does); a file that was a symlink in the submission
    is removed, as is any symlink."""

    course_root = Unicode("", help="the course directory (nbgrader_config.py sets it)").tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        graded = Path(resources.get("metadata", {}).get("path") or ".").resolve()
        self._clean_graded_folder(graded, resources)
        scratch = Path(tempfile.mkdtemp(prefix="course-scratch-"))
        _copy_regular_files(graded, scratch)
        runtime = tempfile.mkdtemp(prefix="course-kernel-")
        saved = {key: os.environ.get(key) for key in _ENV_KEYS}
        os.environ[ENV] = "1"
        os.environ["JUPYTER_RUNTIME_DIR"] = runtime
        os.environ["COURSE_GRADING_NOTEBOOK_DIR"] = str(scratch)
        resources.setdefault("metadata", {})
        resources[_SESSION_KEY] = {"runtime": runtime, "scratch": str(scratch), "saved_env": saved,
                                   "graded": str(graded), "saved_path": resources["metadata"].get("path"),
                                   "expected": {}, "records": {}, "forged": [], "changes": {}, "order": [],
                                   "probe_failures": [], "restored": list(nb.metadata.pop(_RESTORED_KEY, None) or [])}
        resources["metadata"]["path"] = str(scratch)  # the kernel's working directory
        return nb, resources

    def _clean_graded_folder(self, graded: Path, resources: dict) -> None:
        removed = remove_links(graded)
        nbg = resources.get("nbgrader", {})
        if self.course_root and nbg.get("student") and nbg.get("assignment"):
            submitted = Path(self.course_root) / "submitted" / nbg["student"] / nbg["assignment"]
            source = Path(self.course_root) / "source" / nbg["assignment"]
            for path in sorted(graded.rglob("*")):
                rel = path.relative_to(graded)
                if path.is_dir() or path.suffix == ".ipynb":
                    continue
                came_from = submitted / rel
                from_source = (source / rel).is_file() and not (source / rel).is_symlink()
                if not from_source and (came_from.is_symlink() or any(p.is_symlink() for p in came_from.parents
                                                                       if submitted in p.parents or p == submitted)):
                    path.unlink()
                    removed.append(str(rel))
        if removed:
            self.log.warning("Removed links from the graded folder (never followed, never handed back): %s",
                             ", ".join(removed))


def _check_source(source: str, calls: list[tuple[str, str, str, int]]) -> str:
    """``source`` (a trusted test cell) with each ``check(...)`` call made to reach the real
    checker (not a name the notebook may have rebound) and carry its token and seed."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"
                and node.args and isinstance(node.args[0], ast.Constant)):
            hidden = any(k.arg == "hidden" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
            found.append((node, node.args[0].value, "hidden" if hidden else "visible"))
    edits = []  # (line, byte column, old length, text)
    tokens = {(name, suite): (token, seed) for name, suite, token, seed in calls}
    for node, name, suite in found:
        token, seed = tokens[(name, suite)]
        edits.append((node.end_lineno - 1, node.end_col_offset - 1, 0, f", _grading={f'{token}:{seed}'!r}"))
        edits.append((node.func.lineno - 1, node.func.col_offset, node.func.end_col_offset - node.func.col_offset,
                      "__import__('utils.checks', fromlist=['check']).check"))
    for line, col, length, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        raw = lines[line].encode()
        lines[line] = (raw[:col] + text.encode() + raw[col + length:]).decode()
    return "".join(lines)


def _is_check_cell(cell: NotebookNode) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution") and bool(checks_in(cell.source))


def _take_records(cell: NotebookNode, remove: bool = False) -> list:
    """Take the record outputs out of ``cell`` and return their payloads. While the notebook
    runs, each is replaced in place by a placeholder (nbclient tracks display outputs by their
    position); at the end (``remove=True``) they are dropped."""
    payloads, kept = [], []
    for output in cell.get("outputs", []):
        data = output.get("data") if isinstance(output, dict) else None
        if isinstance(data, dict) and records.MIME in data:
            payloads.append(data[records.MIME])
            if not remove:
                kept.append(NotebookNode(output_type="display_data", metadata={},
                                         data={"text/plain": "(outputs taken by the grader)"}))
        elif not (remove and isinstance(data, dict) and data == {"text/plain": "(outputs taken by the grader)"}):
            kept.append(output)
    cell.outputs = kept
    return payloads


class ResilientExecute(Execute):
    """nbgrader's Execute, plus the grading channel, and a cell that kills or hangs the kernel
    costs only itself.

    * Check cells run with their tokens (``_check_source``); their records are taken out of their
      outputs as soon as they finish. A record output in any other cell is a forgery.
    * After every cell the kernel is asked what of the guarded state has changed (``probe``).
    * nbgrader gives up on the whole notebook when the kernel dies (a memory hog the operating
      system kills, ``os._exit``, a crash) or stops answering (an uninterruptible loop). Here the
      cell gets an error output instead, the kernel is restarted, and the cells before it are run
      again (without their outputs) so that later exercises still find what they need. A kernel
      found dead *before* a cell runs is blamed on the cell before, not on this one.
    """

    max_restarts = Integer(3, help="kernel restarts allowed per notebook before giving up on the rest").tag(config=True)
    probe_timeout = Integer(120, help="seconds the kernel has to answer the grader's question after a cell").tag(config=True)

    def create_kernel_manager(self):
        km = super().create_kernel_manager()
        state = (self.resources or {}).get(_SESSION_KEY)
        if state is not None:
            # The kernel's connection file and sockets in the private runtime folder, the only
            # one a sandboxed kernel shares with this process (not the current directory).
            km.connection_file = os.path.join(state["runtime"], "kernel.json")
            if km.transport == "ipc":
                km.ip = os.path.join(state["runtime"], "kernel-ipc")
        return km

    def preprocess(self, nb, resources=None, km=None):
        self._failed_cells: set[int] = set()
        self._restarts = 0
        self._baseline = False
        return super().preprocess(nb, resources, km)

    @property
    def _state(self) -> dict | None:
        return (self.resources or {}).get(_SESSION_KEY)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        state = self._state
        if self._restarts > self.max_restarts:
            cell.outputs = [_error("NotRun", "not run: the kernel had to be restarted too many times")]
            return cell, resources
        if state is not None and not self._baseline:
            self._baseline = isinstance(self._probe(index, baseline=True), list)
        if not self._alive():
            # The cell before stopped the kernel on its way out (exit in a thread, a delayed kill).
            before = max((i for i in state["order"] if i < index), default=None) if state else None
            self.log.warning("the kernel died after cell %s; restarting it", before)
            if before is not None:
                self._failed_cells.add(before)
                self.nb.cells[before].outputs.append(_error("KernelDied", "this cell stopped the kernel"))
            self._restart_and_replay(index)
        source = cell.source
        is_check = state is not None and _is_check_cell(cell)
        if is_check:
            calls = [(name, suite, secrets.token_hex(16), secrets.randbelow(2**31 - 1) + 1 if suite == "hidden" else 0)
                     for name, suite in checks_in(source)]
            state["expected"][index] = calls
            cell.source = _check_source(source, calls)
        start = time.monotonic()
        try:
            result = super().preprocess_cell(cell, resources, index)
            seconds = time.monotonic() - start
            if seconds > 5:
                self.log.info("cell %d took %.1f s", index, seconds)
        except (DeadKernelError, CellTimeoutError) as e:
            died = isinstance(e, DeadKernelError)
            self.log.warning("cell %d %s; restarting the kernel", index, "killed the kernel" if died else "hung the kernel")
            cell.outputs = [_error(
                "KernelDied" if died else "CellTimeoutError",
                "this cell stopped the kernel (it used more memory than allowed, or crashed it)" if died
                else f"this cell ran for more than {self.timeout} s and could not be interrupted",
            )]
            self._failed_cells.add(index)
            result = (cell, resources)
            self._restart_and_replay(index)
        finally:
            cell.source = source
        if state is not None:
            payloads = _take_records(cell)
            if is_check:
                state["records"][index] = payloads
            elif payloads:
                state["forged"].append((index, [p.get("exercise") if isinstance(p, dict) else None for p in payloads]))
            state["order"].append(index)
            changed = self._probe(index)
            if changed is _DEAD:  # the kernel died just after this cell: this cell's doing
                self.log.warning("the kernel died right after cell %d; restarting it", index)
                cell.outputs.append(_error("KernelDied", "this cell stopped the kernel"))
                self._failed_cells.add(index)
                self._restart_and_replay(index + 1)
                changed = self._probe(index)
            state["changes"][index] = None if changed is _DEAD else changed
        return result

    def _update_display_id(self, display_id, msg):
        # A display update from the learner's code must not stop grading (nbclient fails on an
        # update aimed at an output that is gone).
        try:
            super()._update_display_id(display_id, msg)
        except (IndexError, KeyError, TypeError) as e:
            self.log.warning("ignored a display update (%s)", type(e).__name__)

    def _alive(self) -> bool:
        from nbclient.util import run_sync

        try:
            return bool(run_sync(self.km.is_alive)())
        except Exception:  # noqa: BLE001
            return True

    def _probe(self, index: int, baseline: bool = False) -> list[str] | None:
        """Ask the kernel which guarded objects have changed since it started (None: no answer)."""
        state = self._state
        if state is None or self.kc is None:
            return None
        saved, self.timeout = self.timeout, self.probe_timeout
        try:
            msg_id = self.kc.execute("", silent=True, store_history=False,
                                     user_expressions={"probe": PROBE_EXPRESSION})
            reply = self.wait_for_reply(msg_id)
            result = (reply or {}).get("content", {}).get("user_expressions", {}).get("probe", {})
            text = result.get("data", {}).get("text/plain") if result.get("status") == "ok" else None
            changed = json.loads(ast.literal_eval(text))
            if not isinstance(changed, list):
                raise ValueError(text)
            return [str(c) for c in changed]
        except DeadKernelError:
            return _DEAD
        except Exception as e:  # noqa: BLE001 (no answer, or an answer that is not ours)
            if not baseline:
                state["probe_failures"].append(index)
            self.log.warning("no answer from the kernel's integrity probe after cell %d (%s)", index, type(e).__name__)
            return None
        finally:
            self.timeout = saved

    def _restart_and_replay(self, upto: int) -> None:
        self._restarts += 1
        if self._restarts > self.max_restarts:
            return
        from nbclient.util import run_sync

        run_sync(self.km.restart_kernel)(now=True)
        try:
            self.kc.stop_channels()
        except Exception:
            pass
        self.start_new_kernel_client()
        self._baseline = isinstance(self._probe(upto, baseline=True), list)
        for i, cell in enumerate(self.nb.cells[:upto]):
            if cell.cell_type == "code" and i not in self._failed_cells:
                try:
                    # Check cells run as written: their checks do nothing in a grading kernel.
                    self.execute_cell(copy.deepcopy(cell), i, store_history=False)
                except (DeadKernelError, CellTimeoutError):
                    self._failed_cells.add(i)
                    self._restart_and_replay(upto)
                    return


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class JudgeChecks(NbGraderPreprocessor):
    """After execution: the verdict of every check cell, decided here from its records.

    Each graded test cell that calls ``check(...)`` gets exactly one output: the verdicts (on
    stdout) when all its checks pass, an error carrying them otherwise. Whatever the kernel
    printed there (warnings on stderr, a monkeypatched "✓") is discarded. What deserves a
    human look goes to the review list ``autograde_logs/review/<assignment>/<student>.json``.
    """

    course_root = Unicode("", help="the course directory (nbgrader_config.py sets it)").tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        state = resources.get(_SESSION_KEY)
        if state is None:
            raise RuntimeError("JudgeChecks needs PrepareGrading earlier in the pipeline (see nbgrader_config.py)")
        try:
            review = self._judge(nb, state)
            self._write_review(resources, review)
        finally:
            self._clean_up(resources, state)
        return nb, resources

    # -- what changed, where ----------------------------------------------------------------------
    @staticmethod
    def _timeline(state: dict) -> tuple[dict[int, set[str]], dict[int, set[str]], dict[str, int]]:
        """For each executed cell: guarded objects changed when it started, and when it ended;
        for each changed object, the cell that last changed it."""
        before, after, introduced = {}, {}, {}
        current: set[str] = set()
        for index in state["order"]:
            before[index] = set(current)
            changed = state["changes"].get(index)
            if changed is None:  # no answer from the kernel: assume nothing was undone
                after[index] = set(current)
                continue
            now = set(changed)
            for key in now - current:
                introduced[key] = index
            current = now
            after[index] = now
        return before, after, introduced

    def _where(self, nb: NotebookNode, introduced: dict[str, int], keys: set[str]) -> str:
        parts = []
        by_cell: dict[int, list[str]] = {}
        for key in sorted(keys):
            by_cell.setdefault(introduced.get(key, -1), []).append(key)
        for index, names in sorted(by_cell.items()):
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            if index < 0:
                parts.append(shown)
                continue
            lines = locate(nb.cells[index].source, names)
            where = "; ".join(f"line {f.line}: {f.what}" for f in lines[:3]) or "no line names it"
            parts.append(f"{shown} (cell {index + 1}, {where})")
        return "; ".join(parts)

    def _judge(self, nb: NotebookNode, state: dict) -> list[dict]:
        review: list[dict] = []
        before, after, introduced = self._timeline(state)
        forged: dict[str, list[int]] = {}
        for index, names in state["forged"]:
            for name in names:
                forged.setdefault(str(name), []).append(index)
        # Record outputs that reached a cell later (display updates): forgeries too; never kept.
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                for payload in _take_records(cell, remove=True):
                    forged.setdefault(str(payload.get("exercise") if isinstance(payload, dict) else None), []).append(index)
        for name, cells in forged.items():
            review.append({"what": "record output outside its check cell (forged)", "exercise": name,
                           "cells": sorted({i + 1 for i in cells}), "cost": True})
        failures = sorted(state["probe_failures"])
        for index in failures:
            review.append({"what": "the kernel did not answer the grader's integrity question", "cell": index + 1,
                           "cost": True})
        for index, cell in enumerate(nb.cells):
            if not _is_check_cell(cell):
                continue
            calls = state["expected"].get(index)
            if calls is None:
                calls = [(name, suite, "", 0) for name, suite in checks_in(cell.source)]
            payloads = state["records"].get(index, [])
            changed = before.get(index, set()) | after.get(index, set())
            unverified = any(i <= index for i in failures)
            verdicts: dict[tuple[str, str], Verdict] = {}
            for name, suite, token, seed in calls:
                if index not in state["expected"]:
                    v = Verdict(name, suite, False, f"✗ {name}: this check did not run (an earlier cell stopped the kernel"
                                " too many times).")
                elif changed:
                    during = after.get(index, set()) - before.get(index, set())
                    when = "while this check ran, the notebook had changed" if during and not before.get(index) \
                        else "before this check ran, the notebook changed"
                    v = tamper_verdict(name, suite, f"{when} what the checks rely on:"
                                       f" {self._where(nb, introduced, changed)}.")
                    review.append({"what": "changed the checker or torch", "exercise": name, "suite": suite,
                                   "detail": v.message, "cost": True})
                elif unverified:
                    v = tamper_verdict(name, suite, "the grader could not confirm that the checker was intact when"
                                       " this check ran (the kernel stopped answering its question).")
                elif name in forged:
                    cells = ", ".join(str(i + 1) for i in sorted(set(forged[name])))
                    v = tamper_verdict(name, suite, f"forged outputs: the notebook sent outputs for this check from"
                                       f" outside its check cell (cell {cells}); only the check itself sends them.")
                else:
                    visible = verdicts.get((name, "visible"))
                    v = grade_payloads(payloads, name, suite, token, seed, visible)
                    if "review list" in v.message:
                        review.append({"what": "copied reference or extra record", "exercise": name, "suite": suite,
                                       "detail": v.message, "cost": True})
                    for note in v.review:
                        review.append({"what": note, "exercise": name, "suite": suite, "cell": index + 1, "cost": False})
                verdicts[(name, suite)] = v
            text = "\n".join(v.message for v in verdicts.values())
            if all(v.passed for v in verdicts.values()):
                cell.outputs = [NotebookNode(output_type="stream", name="stdout", text=text + "\n")]
            else:
                failed = "\n".join(v.message for v in verdicts.values() if not v.passed)
                cell.outputs = [NotebookNode(output_type="error", ename="CheckFailed", evalue=failed,
                                             traceback=failed.splitlines())]
        # For a human, at no cost: constructs that can reach the grader without naming it, and
        # uses of the reference that the source names (a call into it costs the check above).
        for index, source in learner_cells(nb):
            for finding in review_in_source(source):
                review.append({"what": finding.what, "cell": index + 1, "line": finding.line, "cost": False})
        for name, uses in reference_uses(nb).items():
            for index, use in uses:
                review.append({"what": f"names the reference {use.path}", "exercise": name, "cell": index + 1,
                               "line": use.line, "cost": False})
        for item in state.get("restored", []):
            review.append({**item, "cost": False})
        return review

    def _write_review(self, resources: dict, review: list[dict]) -> None:
        nbg = resources.get("nbgrader", {})
        for item in review:
            self.log.warning("review: %s", json.dumps(item, ensure_ascii=False))
        if not self.course_root or not nbg.get("student") or not nbg.get("assignment"):
            return
        folder = Path(self.course_root) / "autograde_logs" / "review" / nbg["assignment"]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{nbg['student']}.json"
        notebook = nbg.get("notebook", "")
        existing = json.loads(target.read_text()) if target.is_file() else {}
        existing[notebook] = review
        target.write_text(json.dumps(existing, indent=1, ensure_ascii=False) + "\n")

    @staticmethod
    def _clean_up(resources: dict, state: dict) -> None:
        shutil.rmtree(state["scratch"], ignore_errors=True)
        shutil.rmtree(state["runtime"], ignore_errors=True)
        resources["metadata"]["path"] = state["saved_path"]
        for key, value in state["saved_env"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        remove_links(Path(state["graded"]))  # a sandbox-less kernel could have written there


# ---------------------------------------------------------------------------------------------
# Sanitizing: the instructor's cells as the instructor wrote them
# ---------------------------------------------------------------------------------------------


def _set_cell_type(cell: NotebookNode, cell_type: str) -> None:
    """What nbgrader's ``update_cell_type`` does, without its validation (which fails on cells of
    notebooks older than nbformat 4.5, and with it the whole submission)."""
    cell.cell_type = cell_type
    if cell_type == "code":
        cell.outputs, cell.execution_count = [], None
        cell.pop("attachments", None)
    else:
        cell.pop("outputs", None)
        cell.pop("execution_count", None)


def _without_hidden_tests(source: str) -> str:
    lines, keep, hidden = source.splitlines(), [], False
    for line in lines:
        if HIDDEN_BEGIN in line:
            hidden = True
        elif HIDDEN_END in line:
            hidden = False
        elif not hidden:
            keep.append(line)
    return "\n".join(keep).rstrip()


class RestoreCells(OverwriteCells):
    """nbgrader's OverwriteCells, made to survive what students do to a notebook's metadata.

    * A cell's nbgrader role (answer, test, read-only, points) comes from the gradebook, not from
      the submission: an answer cell a student marked "graded" or turned into Markdown is an
      answer cell again (nbgrader would fail on it, and export the student's grade as 0).
    * A cell that claims a role the assignment does not have loses the claim (it is the
      student's own cell).
    * A read-only cell is restored silently when it differs only by its hidden tests (which the
      student's copy never had); a real edit is reported by name.
    """

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        self._restored: list[dict] = []
        nb, resources = super().preprocess(nb, resources)
        # For the review list: autograding reads it back from the sanitized notebook (this
        # preprocessor overwrites whatever a submission put there).
        nb.metadata[_RESTORED_KEY] = self._restored
        return nb, resources

    def _note(self, grade_id: str, what: str) -> None:
        self.log.warning("Cell %s: %s", grade_id, what)
        self._restored.append({"what": what, "grade_id": grade_id})

    def preprocess_cell(self, cell: NotebookNode, resources: dict, cell_index: int):
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            return cell, resources
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if not grade_id:
            del cell.metadata["nbgrader"]
            self._note(f"#{cell_index + 1}", "nbgrader metadata without a cell id removed (the student's own cell)")
            return cell, resources
        try:
            source_cell = self.gradebook.find_source_cell(grade_id, self.notebook_id, self.assignment_id)
        except MissingEntry:
            del cell.metadata["nbgrader"]
            self._note(grade_id, "not a cell of this assignment; its nbgrader metadata was removed")
            return cell, resources
        roles = {"grade": self._exists("find_graded_cell", grade_id), "solution": self._exists("find_solution_cell", grade_id),
                 "task": self._exists("find_task_cell", grade_id), "locked": bool(source_cell.locked)}
        claimed = {key: bool(meta.get(key, False)) for key in roles}
        restored = {**meta, **roles, "grade_id": grade_id, "schema_version": 3}
        if roles["grade"]:
            restored["points"] = float(self.gradebook.find_graded_cell(grade_id, self.notebook_id, self.assignment_id).max_score)
        else:
            restored.pop("points", None)
        if claimed != roles:
            changed = ", ".join(f"{k}: {claimed[k]} -> {roles[k]}" for k in roles if claimed[k] != roles[k])
            self._note(grade_id, f"nbgrader role restored from the assignment ({changed})")
        cell.metadata["nbgrader"] = restored
        if cell.cell_type != source_cell.cell_type:
            self._note(grade_id, f"cell type restored ({cell.cell_type} -> {source_cell.cell_type})")
            _set_cell_type(cell, source_cell.cell_type)
        if source_cell.locked and cell.source.rstrip() != source_cell.source.rstrip():
            if cell.source.rstrip() == _without_hidden_tests(source_cell.source):
                cell.source = source_cell.source  # the hidden tests, which the student never had
            else:
                self._note(grade_id, "a read-only cell was edited; the original is restored for grading")
                cell.source = source_cell.source
        return super().preprocess_cell(cell, resources, cell_index)

    def _exists(self, finder: str, grade_id: str) -> bool:
        try:
            getattr(self.gradebook, finder)(grade_id, self.notebook_id, self.assignment_id)
            return True
        except MissingEntry:
            return False

    def report_change(self, name, attr, old, new) -> None:
        if attr == "checksum":  # handled above, with a message that says what happened
            return
        super().report_change(name, attr, old, new)


class OnlyFeedback(NbGraderPreprocessor):
    """In ``generate_feedback``: nothing but the feedback pages reaches ``feedback/``.

    nbgrader copies every other file of the graded folder into the feedback folder (following
    symlinks). This removes those copies, and any link, before the feedback is released."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        graded = Path(resources.get("metadata", {}).get("path") or ".").resolve()
        nbg = resources.get("nbgrader", {})
        parts = graded.parts
        if "autograded" in parts:
            at = len(parts) - 1 - parts[::-1].index("autograded")
            feedback = Path(*parts[:at], "feedback", *parts[at + 1:])
            removed = remove_links(feedback)
            for path in graded.rglob("*"):
                rel = path.relative_to(graded)
                target = feedback / rel
                if path.suffix != ".ipynb" and (target.is_file() or target.is_symlink()) and not target.is_dir():
                    target.unlink()
                    removed.append(str(rel))
            if removed:
                self.log.warning("Kept out of %s's feedback: %s", nbg.get("student", "?"), ", ".join(sorted(removed)))
        return nb, resources

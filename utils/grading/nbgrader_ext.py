"""nbgrader preprocessors that make autograding robust and unfakeable.

They are wired into ``nbgrader autograde`` by ``nbgrader_config.py`` (in this folder, copied
into every course directory ``python -m utils.grading build`` writes)::

    PrepareGrading -> ResilientExecute -> JudgeChecks -> (nbgrader's own: SaveAutoGrades, ...)
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

from . import ENV, RECORD_DIR, Session
from .detect import reference_uses, tampering
from .judge import checks_in, grade_check

_SESSION_KEY = "course_grading"
_ENV_KEYS = (ENV, "JUPYTER_RUNTIME_DIR", "COURSE_GRADING_NOTEBOOK_DIR")


def _record_dir(resources: dict) -> Path:
    folder = Path(resources.get("metadata", {}).get("path") or ".")
    stem = Path(resources.get("nbgrader", {}).get("notebook") or resources.get("unique_key") or "notebook").stem
    return (folder / RECORD_DIR / stem).resolve()


class PrepareGrading(NbGraderPreprocessor):
    """Before the kernel starts: a fresh secret, an empty record folder, a private runtime folder
    for the kernel's connection files (the sandbox shares only that one), all put in the
    environment the kernel inherits."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        record_dir = _record_dir(resources)
        # Whatever a submission brought along in that folder is not a record of this run.
        shutil.rmtree(record_dir.parent, ignore_errors=True)
        record_dir.mkdir(parents=True)
        session = Session(record_dir, secrets.randbelow(2**31 - 1) + 1)
        runtime = tempfile.mkdtemp(prefix="course-kernel-")
        saved = {key: os.environ.get(key) for key in _ENV_KEYS}
        os.environ[ENV] = session.to_env()
        os.environ["JUPYTER_RUNTIME_DIR"] = runtime
        os.environ["COURSE_GRADING_NOTEBOOK_DIR"] = str(record_dir.parent.parent)
        resources[_SESSION_KEY] = {"session": session, "runtime": runtime, "saved_env": saved}
        return nb, resources


class ResilientExecute(Execute):
    """nbgrader's Execute, except that a cell that kills or hangs the kernel costs only itself.

    nbgrader gives up on the whole notebook when the kernel dies (a memory hog the operating
    system kills, a crash) or stops answering (an uninterruptible loop). Here the cell gets an
    error output instead, the kernel is restarted, and the cells before it are run again
    (without their outputs) so that later exercises still find what they need.
    """

    max_restarts = Integer(3, help="kernel restarts allowed per notebook before giving up on the rest").tag(config=True)

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
        return super().preprocess(nb, resources, km)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        if self._restarts > self.max_restarts:
            cell.outputs = [_error("NotRun", "not run: the kernel had to be restarted too many times")]
            return cell, resources
        start = time.monotonic()
        try:
            result = super().preprocess_cell(cell, resources, index)
            seconds = time.monotonic() - start
            if seconds > 5:
                self.log.info("cell %d took %.1f s", index, seconds)
            return result
        except (DeadKernelError, CellTimeoutError) as e:
            died = isinstance(e, DeadKernelError)
            self.log.warning("cell %d %s; restarting the kernel", index, "killed the kernel" if died else "hung the kernel")
            cell.outputs = [_error(
                "KernelDied" if died else "CellTimeoutError",
                "this cell stopped the kernel (it used more memory than allowed, or crashed it)" if died
                else f"this cell ran for more than {self.timeout} s and could not be interrupted",
            )]
            self._failed_cells.add(index)
            self._restart_and_replay(index)
            return cell, resources

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
        for i, cell in enumerate(self.nb.cells[:upto]):
            if cell.cell_type == "code" and i not in self._failed_cells:
                try:
                    self.execute_cell(copy.deepcopy(cell), i, store_history=False)
                except (DeadKernelError, CellTimeoutError):
                    self._failed_cells.add(i)
                    self._restart_and_replay(upto)
                    return


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class JudgeChecks(NbGraderPreprocessor):
    """After execution: the verdict of every check cell, decided here from recorded outputs.

    Each graded test cell that calls ``check(...)`` gets exactly one output: the verdicts (on
    stdout) when all its checks pass, an error carrying them otherwise. Whatever the kernel
    printed there (warnings on stderr, a monkeypatched "✓") is discarded.
    """

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        state = resources.get(_SESSION_KEY)
        if state is None:
            raise RuntimeError("JudgeChecks needs PrepareGrading earlier in the pipeline (see nbgrader_config.py)")
        session: Session = state["session"]
        uses = reference_uses(nb)
        tampered = tampering(nb)
        tamper_note = ""
        if tampered:
            shown = "; ".join(f"cell {i + 1}, line {t.line}: {t.what}" for i, t in tampered[:5])
            tamper_note = (
                f"✗ this notebook changes or bypasses the course's checking code, or torch ({shown}).\n"
                "  No check in it gets credit; your instructor can review it by hand."
            )
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type != "code" or not meta.get("grade") or meta.get("solution"):
                continue
            calls = checks_in(cell.source)
            if not calls:
                continue
            if tamper_note:
                cell.outputs = [NotebookNode(output_type="error", ename="CheckFailed", evalue=tamper_note,
                                             traceback=tamper_note.splitlines())]
                continue
            verdicts = []
            for name, suite in calls:
                where = [f"{u.path} in cell {i + 1}, line {u.line}" for i, u in uses.get(name, [])]
                verdicts.append(grade_check(session.record_dir, name, suite, session.secret, where))
            text = "\n".join(v.message for v in verdicts)
            if all(v.passed for v in verdicts):
                cell.outputs = [NotebookNode(output_type="stream", name="stdout", text=text + "\n")]
            else:
                failed = "\n".join(v.message for v in verdicts if not v.passed)
                cell.outputs = [NotebookNode(output_type="error", ename="CheckFailed", evalue=failed,
                                             traceback=failed.splitlines())]
        shutil.rmtree(session.record_dir.parent, ignore_errors=True)
        shutil.rmtree(state["runtime"], ignore_errors=True)
        for key, value in state["saved_env"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return nb, resources

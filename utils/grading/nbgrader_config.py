# nbgrader configuration for this course (written into the course directory by
# `python -m utils.grading build`; edit the copy there to suit your class).
#
# What it changes from nbgrader's defaults, and why:
# * Autograding decides each check cell from the outputs the learner's code produced, judged in
#   nbgrader's own process (utils.grading.nbgrader_ext.JudgeChecks). Monkeypatching the checker
#   or torch inside the notebook, or a warning on stderr, cannot change a grade.
# * A cell that kills or hangs the kernel costs only itself (ResilientExecute); every cell has a
#   time limit and the kernel a memory limit, so a learner's infinite loop or memory hog fails
#   that exercise, not the whole submission.
# * Deleted test cells are put back, edited ones restored, and every cell's role and type come
#   from the gradebook (RestoreCells): a student's metadata edits cannot crash grading.
# * Feedback never shows hidden tests (they are cleared, and hidden-test verdicts say only that
#   hidden tests failed), and nothing but the feedback pages reaches feedback/ (OnlyFeedback).
# * The kernel works in a scratch copy of the submission: nothing it writes is kept.
# * With bubblewrap installed (Debian: apt-get install bubblewrap), autograding runs each
#   kernel in a sandbox, as an unprivileged user with a minimal environment: no network, no
#   access to other submissions, the gradebook or the instructor's source. Set
#   COURSE_SANDBOX=0 to turn it off, =1 to require it.
# * Every flag that deserves a human look is listed in autograde_logs/review/.
import os
from pathlib import Path

from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearHiddenTests,
    ClearOutput,
    DeduplicateIds,
    GetGrades,
    LimitOutput,
    OverwriteKernelspec,
    SaveAutoGrades,
)
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor

from utils.grading.kernel import bwrap_available
from utils.grading.nbgrader_ext import JudgeChecks, OnlyFeedback, PrepareGrading, ResilientExecute, RestoreCells

c = get_config()  # noqa: F821 (nbgrader provides it)
here = Path(__file__).resolve().parent

c.CourseDirectory.root = str(here)
c.CourseDirectory.course_id = "mechinterp-course"

# --- autograding -----------------------------------------------------------------------------
# Sanitizing: nbgrader's, with RestoreCells for OverwriteCells (cell roles and types come from
# the gradebook, not from the submission; expected differences are not reported as edits).
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, RestoreCells, CheckCellMetadata]
c.PrepareGrading.course_root = str(here)
c.JudgeChecks.course_root = str(here)
c.Autograde.autograde_preprocessors = [
    PrepareGrading,
    ResilientExecute,
    JudgeChecks,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
c.Autograde.create_student = True
c.OverwriteCells.add_missing_cells = True
c.Execute.timeout = int(os.environ.get("COURSE_CELL_TIMEOUT", "600"))  # seconds per cell
c.Execute.interrupt_on_timeout = True
c.Execute.iopub_timeout = 15
c.ResilientExecute.max_restarts = 3

# The grading kernel (jupyter/kernels/course-grading): limits, and the sandbox when on.
os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(here / "jupyter"), os.environ.get("JUPYTER_PATH")]))
c.Execute.kernel_name = "course-grading"
c.KernelManager.transport = "ipc"  # unix sockets: the sandboxed kernel has no network at all
os.environ.setdefault("COURSE_KERNEL_MEMORY", "6G")  # address space; the chapters need < 2 GB
os.environ.setdefault("COURSE_KERNEL_CPU", "3600")  # CPU seconds per notebook
os.environ.setdefault("COURSE_KERNEL_PROCS", "2048")  # processes + threads of the sandbox user, all kernels together
os.environ.setdefault("COURSE_KERNEL_FILE_SIZE", "1G")  # the largest file a kernel may write
# One thread per kernel: grade several submissions at once, one per core (and tiny torch
# workloads run far slower with two threads on a busy machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
_sandbox = os.environ.get("COURSE_SANDBOX", "auto")
if _sandbox == "1" and not bwrap_available():
    raise RuntimeError("COURSE_SANDBOX=1 but bubblewrap (bwrap) is missing or cannot run here")
os.environ["COURSE_KERNEL_SANDBOX"] = "1" if _sandbox == "1" or (_sandbox == "auto" and bwrap_available()) else "0"

# --- feedback: no hidden tests, nothing but the feedback pages ---------------------------------
c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, OnlyFeedback, CSSHTMLHeaderPreprocessor]
c.ClearHiddenTests.enforce_metadata = False

# --- generating the student version ----------------------------------------------------------
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# --- collecting from a learning-management system (nbgrader zip_collect) ---------------------
# Files in downloaded/<assignment>/archive/ named "<student id>_<anything>_<NN_name>.ipynb".
# (nbgrader matches it against the file's full path, hence the leading ".*/")
c.FileNameCollectorPlugin.named_regexp = r".*/(?P<student_id>[^_/]+)_(?:[^/]*_)?(?P<file_id>\d\d_[A-Za-z0-9_]+\.ipynb)$"
c.FileNameCollectorPlugin.valid_ext = [".ipynb"]
c.ZipCollectApp.collector_plugin = "nbgrader.plugins.zipcollect.FileNameCollectorPlugin"

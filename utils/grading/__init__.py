"""Classroom grading with nbgrader, designed so that a grade cannot be faked from the notebook.

How a grade is decided (see ``nbgrader_ext.py`` for the details, ``nbgrader_config.py`` for the
wiring, and the README's "Teaching with this course"):

1. ``PrepareGrading`` (in nbgrader's process) gives the kernel a scratch copy of the submission
   to work in, and the flag ``COURSE_GRADING=1``; nothing secret.
2. ``ResilientExecute`` runs the notebook. Each of the course's check cells runs with a one-time
   token (and a fresh seed for its hidden tests) added to its ``check(...)`` calls; ``check``
   runs the learner's code and publishes the *outputs* as that cell's own output
   (:mod:`.record`), with calls into the reference and fingerprints of the code that ran
   (:mod:`.copies`). The grader takes them the moment the cell ends. After every cell it asks
   the kernel what of torch and the checker has changed (:mod:`.probe`).
3. ``JudgeChecks`` (back in nbgrader's process, where the learner's code never ran) runs the
   reference and the comparisons itself and replaces each check cell's outputs with the verdict,
   and writes the instructor's review list. What the kernel printed cannot change the grade.

Hidden-test verdicts say that hidden tests failed, never what they are.
"""

from __future__ import annotations

import os

ENV = "COURSE_GRADING"  # "1" in the grading kernel's environment; nothing secret


def active() -> bool:
    """Is this process a kernel that nbgrader is grading?"""
    return os.environ.get(ENV) == "1"


DEMO_STEPS = 20  # training steps a demonstration runs while a notebook is being autograded


def demo_steps(steps: int, what: str) -> int:
    """How many of ``steps`` training steps a demonstration runs.

    All of them, except:

    * while autograding, where no grade depends on a demonstration's result (every check runs
      the student's code on its own inputs): 20 steps, so a chapter grades in seconds rather
      than minutes;
    * when ``COURSE_DEMO_STEPS=N`` is set (for a quick dry run of a notebook, as the tests do
      for the learner's copy): N steps. ``COURSE_DEMO_STEPS=0`` keeps every step, even when
      grading.

    The notebook says so where it happens."""
    raw = os.environ.get("COURSE_DEMO_STEPS")
    if raw is None and not active():
        return steps
    try:
        cap = int(raw) if raw is not None else DEMO_STEPS
    except ValueError:
        cap = DEMO_STEPS
    if cap <= 0 or steps <= cap:
        return steps
    why = "autograding" if raw is None else f"COURSE_DEMO_STEPS={cap}"
    print(f"({why}: {what} trains for {cap} of its {steps} steps; "
          + ("no grade depends on it, so " if raw is None else "")
          + "the results below are those of an untrained model)")
    return cap

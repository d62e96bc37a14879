"""Classroom grading with nbgrader, designed so that a grade cannot be faked from the notebook.

How a grade is decided (see ``nbgrader_config.py`` in this folder and the README's "Teaching
with this course"):

1. ``PrepareGrading`` (runs in nbgrader's process) picks a fresh secret, empties the record
   folder of the notebook and puts both into the environment of the kernel it is about to start.
2. The notebook runs. In grading mode a check cell does not judge anything: ``check()`` runs the
   learner's code on the exercise's inputs (the hidden tests reseeded from the secret) and
   writes the *outputs* to the record folder as safetensors and JSON (:mod:`.record`), with any
   calls from the learner's code into the toolkit's reference implementation.
3. ``JudgeChecks`` (back in nbgrader's process, where the learner's code never ran) reads those
   outputs, runs the reference and the comparisons itself, and replaces each check cell's outputs
   with the verdict. What the kernel printed, warned or monkeypatched cannot change the grade:
   the only thing the notebook can influence is the outputs of its own code.

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

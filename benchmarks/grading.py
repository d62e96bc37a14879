"""How long autograding takes, and how it scales with parallel jobs.

    .venv/bin/python benchmarks/grading.py [--chapter 01] [--copies 4] [--jobs 1 2]

Builds a throwaway nbgrader course directory, submits ``--copies`` copies of the chapter's
reference solution, runs the real ``nbgrader autograde`` (through ``python -m utils.grading
autograde --jobs N``) for each ``--jobs`` value, and prints a Markdown table: wall time, time per
submission, and the projected time for a class of 100 on this machine and on 8 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "grading"))

from ch01_submissions import fill_in  # noqa: E402  (fills the answer cells of a release notebook)

from utils.grading.course import autograde, build, nbgrader_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chapter", default="01")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    solution = next((ROOT / "solutions").glob(f"{args.chapter}_*.ipynb"))
    assignment = f"ch{args.chapter}"
    rows = []
    for jobs in args.jobs:
        course = Path(tempfile.mkdtemp(prefix="grading-bench-"))
        try:
            build(course, [args.chapter])
            subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", assignment, "--force"],
                           cwd=course, env=nbgrader_env(), check=True, capture_output=True)
            release = nbformat.read(course / "release" / assignment / solution.name, 4)
            filled = fill_in(release, nbformat.read(solution, 4))
            students = [f"student{i:03d}" for i in range(args.copies)]
            for student in students:
                folder = course / "submitted" / student / assignment
                folder.mkdir(parents=True)
                nbformat.write(filled, folder / solution.name)
            start = time.monotonic()
            results = autograde(course, assignment, students, jobs=jobs)
            wall = time.monotonic() - start
            failed = [s for s, _, code in results if code != 0]
            if failed:
                raise SystemExit(f"autograde failed for {failed}: see {course}/autograde_logs")
            per = sum(seconds for _, seconds, _ in results) / len(results)
            rows.append((jobs, len(students), wall, per, wall / len(students)))
        finally:
            shutil.rmtree(course, ignore_errors=True)
    sandbox = os.environ.get("COURSE_SANDBOX", "auto")
    print(f"\nAutograding chapter {args.chapter} ({os.cpu_count()} CPU cores, COURSE_SANDBOX={sandbox}):\n")
    print("| jobs | submissions | wall (s) | one submission (s) | wall per submission (s) | class of 100 here (min) | class of 100 on 8 cores (min) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for jobs, n, wall, per, throughput in rows:
        print(f"| {jobs} | {n} | {wall:.0f} | {per:.0f} | {throughput:.0f} | {100 * throughput / 60:.0f} | {100 * per / 8 / 60:.0f} |")


if __name__ == "__main__":
    main()

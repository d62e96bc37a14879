"""The per-edit suite, ``./course test --quick``, passes from a fresh clone on a busy machine
(slow: part of the full suite).

Two fresh clones run the README's command at the same time, each being the other's load, beside
one CPU-bound process per core; then both run it again. Each clone starts with nothing but the
committed files: its first run creates its own `.venv` (from pip's cache when it is warm, as in
CI after `./course test` has set up), and every test process starts from a fresh interpreter, so
the first training check pays for torch's lazy imports as in a learner's fresh kernel. What is
cloned is the committed HEAD.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    return dest


@pytest.mark.timeout(3600)
def test_quick_suite_passes_twice_from_fresh_clones_under_parallel_load(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git clone")
    clones = [_clone(tmp_path / name) for name in ("a", "b")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COURSE_"))}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    report = []
    try:
        for round_ in (1, 2):
            start = time.monotonic()
            runs = [subprocess.Popen(["bash", str(c / "course"), "test", "--quick", "-q", "-p", "no:cacheprovider"],
                                     cwd=c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    for c in clones]
            outs = [r.communicate(timeout=2400)[0] for r in runs]
            seconds = time.monotonic() - start
            for clone, run, out in zip(clones, runs, outs):
                summary = out.strip().splitlines()[-1] if out.strip() else "(no output)"
                report.append(f"round {round_}, clone {clone.name}: exit {run.returncode} after {seconds:.0f} s: {summary}")
                assert run.returncode == 0, f"round {round_}, clone {clone.name} failed:\n{out[-6000:]}"
                assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    finally:
        for h in hogs:
            h.kill()
        print("\n".join(report))

"""How long each exercise check takes (the reference passing, and one mistake failing).

    .venv/bin/python benchmarks/checks.py [--repeat 5]

Prints a Markdown table: per exercise, the median and worst wall time of `check()` over the
repeats. The budget is "well under a second" per check cell on 2 CPU cores.

A check remembers the reference's (and the catalogued mistakes') outputs per case, so the first
check of an exercise in a kernel computes them and a second one does not: "first" columns clear
that memory before each repeat, "again" columns do not. A mistake's check also runs the
catalogued mistakes, as far as the first that explains it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import torch

from utils.checks import CheckFailed, check, core, exercises


def timed(name, impl, cold: bool = True) -> float:
    if cold:
        core._TRUSTED.clear()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(CheckFailed):
        check(name, impl)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| exercise | cases | pass, first: median (ms) | pass, first: max (ms) | pass, again: median (ms) "
          "| mistake, first: median (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    worst = 0.0
    for ex in exercises():
        impl = type(ex.title, (ex.reference,), {}) if ex.kind == "class" else (lambda *a, ex=ex, **k: ex.reference(*a, **k))
        timed(ex.name, impl)  # warm-up (first-call costs of torch/einops)
        passes = [timed(ex.name, impl) for _ in range(args.repeat)]
        again = [timed(ex.name, impl, cold=False) for _ in range(args.repeat)]
        fails = [timed(ex.name, ex.mistakes[0].impl) for _ in range(args.repeat)]
        worst = max(worst, max(passes))
        print(f"| {ex.name} | {len(ex.cases)} | {statistics.median(passes) * 1e3:.0f} | {max(passes) * 1e3:.0f} | "
              f"{statistics.median(again) * 1e3:.0f} | {statistics.median(fails) * 1e3:.0f} |")
    print(f"\nslowest passing check (first in a kernel): {worst * 1e3:.0f} ms; torch threads: {torch.get_num_threads()}")

if __name__ == "__main__":
    main()

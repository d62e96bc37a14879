"""Time the course notebooks: wall time and peak memory of a fresh kernel, top to bottom.

    python benchmarks/notebooks.py                      # every solutions/*.ipynb (./course bench)
    python benchmarks/notebooks.py solutions/01_x.ipynb --threads 4 --timeout 900

Each notebook runs in a fresh ``python3`` kernel whose working directory is the notebook's
folder. The notebook is executed from an in-memory copy and never saved, so the source file
is left exactly as it was (files the notebook itself writes are its own business).

The table goes to stdout in Markdown, ready to paste into notes; progress goes to stderr.

* wall (s):       from starting the kernel to the end of the last cell
* peak RSS (MB):  the highest total resident memory of the kernel process and all its
                  children, sampled every 0.1 s, and never below the kernel's own VmHWM
                  (the kernel's exact high-water mark, read from /proc at the end)
* budget:         OK when both are within the budget (default 300 s and 1500 MB)

Exit status: 1 if any notebook raised an error or timed out (2 with --strict also when a
notebook is over budget), otherwise 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with jupyter, but be safe
    psutil = None

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 300.0
BUDGET_MB = 1500.0
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@dataclass
class Result:
    name: str
    wall_s: float
    peak_mb: float | None
    error: str | None  # None: ran to the end without an error


def _vm_hwm_mb(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM) in MB, from /proc."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


class MemorySampler(threading.Thread):
    """Samples the total RSS of a process and its children every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_bytes = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        if psutil is None:
            return
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a child that just exited
                pass
        self.peak_bytes = max(self.peak_bytes, total)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self.sample()
        self._stop_event.set()
        self.join()


def _kill_tree(pid: int) -> None:
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            for p in root.children(recursive=True) + [root]:
                p.kill()
        except psutil.Error:
            pass
    else:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def _kernel_pid(client: NotebookClient) -> int | None:
    prov = getattr(client.km, "provisioner", None)
    pid = getattr(prov, "pid", None)
    if pid is None and getattr(prov, "process", None) is not None:
        pid = prov.process.pid
    return pid


def _first_error_line(e: CellExecutionError) -> str:
    ename = getattr(e, "ename", None) or type(e).__name__
    evalue = (getattr(e, "evalue", "") or "").strip().splitlines()
    return f"{ename}: {evalue[0]}" if evalue else ename


def run_notebook(path: Path, *, timeout: float, threads: int, kernel: str = "python3") -> Result:
    try:
        nb = nbformat.read(str(path), as_version=4)  # in-memory copy; never written back
    except Exception as e:
        return Result(path.name, 0.0, None, f"not a readable notebook: {type(e).__name__}")
    env = dict(os.environ)
    env.update({var: str(threads) for var in THREAD_VARS})
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=int(timeout),  # per cell; the whole notebook is limited below too
        startup_timeout=120,
        allow_errors=False,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    error = None
    peak_mb = None
    timed_out = threading.Event()
    start = time.perf_counter()
    current = {"cell": None}
    try:
        with client.setup_kernel(env=env):
            pid = _kernel_pid(client)
            sampler = MemorySampler(pid) if pid else None
            if sampler:
                sampler.start()

            def watchdog() -> None:
                timed_out.set()
                if pid:
                    _kill_tree(pid)

            timer = threading.Timer(max(0.0, timeout - (time.perf_counter() - start)), watchdog)
            timer.daemon = True
            timer.start()
            try:
                for index, cell in enumerate(nb.cells):
                    current["cell"] = index
                    client.execute_cell(cell, index)
            finally:
                timer.cancel()
                if sampler:
                    sampler.stop()
                    hwm = _vm_hwm_mb(pid)
                    peak_mb = max(sampler.peak_bytes / 2**20, hwm or 0.0) or None
    except CellExecutionError as e:
        error = f"cell {current['cell']}: {_first_error_line(e)}"
    except (CellTimeoutError, DeadKernelError, TimeoutError, RuntimeError) as e:
        if timed_out.is_set():
            error = f"cell {current['cell']}: timed out after {timeout:.0f} s"
        else:
            error = f"cell {current['cell']}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    wall = time.perf_counter() - start
    return Result(path.name, wall, peak_mb, error)


def budget_verdict(r: Result, budget_s: float, budget_mb: float) -> str:
    if r.peak_mb is None and r.wall_s == 0.0:
        return "n/a"
    over = []
    if r.wall_s > budget_s:
        over.append("time")
    if r.peak_mb is not None and r.peak_mb > budget_mb:
        over.append("memory")
    return "OK" if not over else f"OVER ({', '.join(over)})"


def markdown_table(results: list[Result], budget_s: float, budget_mb: float) -> str:
    lines = [
        f"| notebook | wall (s) | peak RSS (MB) | result | budget ({budget_s:.0f} s, {budget_mb:.0f} MB) |",
        "|---|---:|---:|---|---|",
    ]
    for r in results:
        peak = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "n/a"
        result = "pass" if r.error is None else "FAIL"
        lines.append(f"| {r.name} | {r.wall_s:.1f} | {peak} | {result} | "
                     f"{budget_verdict(r, budget_s, budget_mb)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/notebooks.py",
        description="Execute notebooks in fresh kernels; report wall time and peak memory.")
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every solutions/*.ipynb)")
    parser.add_argument("--threads", type=int, default=2,
                        help="OMP/MKL/OpenBLAS threads for the kernel, torch included (default 2)")
    parser.add_argument("--timeout", type=float, default=2 * BUDGET_S,
                        help="seconds before a notebook is stopped and counted as failed "
                             f"(default {2 * BUDGET_S:.0f})")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help=argparse.SUPPRESS)
    parser.add_argument("--budget-mb", type=float, default=BUDGET_MB, help=argparse.SUPPRESS)
    parser.add_argument("--kernel", default="python3", help="kernel name (default python3)")
    parser.add_argument("--strict", action="store_true",
                        help="also exit non-zero when a notebook is over budget")
    args = parser.parse_args(argv)

    paths = args.notebooks or sorted((ROOT / "solutions").glob("*.ipynb"))
    if not paths:
        print("no notebooks to run (solutions/ has none)", file=sys.stderr)
        return 2
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print("no such notebook: " + ", ".join(map(str, missing)), file=sys.stderr)
        return 2
    if psutil is None:
        print("psutil is not installed: peak memory is the kernel's own VmHWM, without "
              "child processes", file=sys.stderr)

    results = []
    for path in paths:
        print(f"running {path} ...", file=sys.stderr, flush=True)
        r = run_notebook(path, timeout=args.timeout, threads=args.threads, kernel=args.kernel)
        status = "ok" if r.error is None else f"FAILED: {r.error}"
        print(f"  {r.wall_s:.1f} s, {r.peak_mb or 0:.0f} MB, {status}", file=sys.stderr, flush=True)
        results.append(r)

    print(markdown_table(results, args.budget_s, args.budget_mb))
    cpus = os.cpu_count()
    print(f"\nthreads: {args.threads}; CPUs: {cpus}; Python {platform.python_version()}; "
          f"{platform.machine()} {platform.system()}")
    failed = [r for r in results if r.error is not None]
    if failed:
        print("\nErrors:")
        for r in failed:
            print(f"- {r.name}: {r.error}")
        return 1
    if args.strict and any(budget_verdict(r, args.budget_s, args.budget_mb) != "OK" for r in results):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

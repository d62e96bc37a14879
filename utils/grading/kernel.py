"""The kernel nbgrader starts for autograding: resource limits, and optionally a sandbox.

``python -m utils.grading.kernel -f CONNECTION_FILE`` sets limits on itself, then replaces itself
with an IPython kernel, inside bubblewrap when the sandbox is on. Settings come from the
environment (``nbgrader_config.py`` sets them):

* ``COURSE_KERNEL_MEMORY``: address-space limit, e.g. ``4G``. An allocation beyond it fails
  with MemoryError/RuntimeError inside the learner's code (a verdict for that exercise) instead
  of the operating system killing the kernel, or the grader.
* ``COURSE_KERNEL_CPU``: CPU seconds for the whole notebook (a backstop; cells have timeouts).
* ``COURSE_KERNEL_SANDBOX``: ``1`` to run the kernel in bubblewrap (``bwrap``, Debian package
  ``bubblewrap``): no network, a private /tmp and home, read-only system and Python, the
  course's toolkit (``utils/`` and ``tests/exercises/``) read-only, and of the course directory
  only the submission being graded (read-write). Other submissions, the gradebook, the
  instructor's source notebooks and the rest of the file system are not there at all.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_size(text: str) -> int:
    text = text.strip().upper()
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def set_limits(memory: str | None, cpu: str | None) -> None:
    if memory:
        size = parse_size(memory)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if cpu:
        seconds = int(cpu)
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))


def bwrap_available() -> bool:
    """Whether bubblewrap exists and can make namespaces here (containers may forbid it)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    import subprocess

    try:
        result = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-all", "--", "true"],
                                capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def sandbox_command(kernel_argv: list[str], connection_file: str, workdir: str) -> list[str]:
    """bwrap arguments around ``kernel_argv``: see the module docstring for what is visible."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--proc", "/proc", "--dev", "/dev",
           "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", "/home", "--tmpfs", "/root"]
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc"):
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            cmd += ["--ro-bind", path, path]
    # Python itself and its packages (a virtual environment may live anywhere).
    pythons = {sys.prefix, sys.base_prefix}
    for path in sys.path:
        resolved = Path(path or ".").resolve()
        if path and resolved.is_dir() and resolved != ROOT and ROOT not in resolved.parents:
            pythons.add(path)  # the course folder itself: only the toolkit, below
    for path in sorted(pythons, key=len):
        if not path.startswith("/usr/") and path != "/usr":  # /usr is bound above
            cmd += ["--ro-bind", path, path]
    # The toolkit and the exercise checks, not the rest of the course folder (solutions/!).
    for sub in ("utils", "tests/exercises", "pyproject.toml"):
        if (ROOT / sub).exists():
            cmd += ["--ro-bind", str(ROOT / sub), str(ROOT / sub)]
    runtime = str(Path(connection_file).resolve().parent)
    cmd += ["--bind", runtime, runtime, "--bind", workdir, workdir, "--chdir", workdir,
            "--dir", "/home/learner", "--setenv", "HOME", "/home/learner", "--setenv", "TMPDIR", "/tmp",
            # ipykernel watches this pid, which the kernel's own pid namespace does not have.
            "--unsetenv", "JPY_PARENT_PID",
            "--setenv", "JUPYTER_RUNTIME_DIR", runtime, "--setenv", "MPLCONFIGDIR", "/tmp"]
    return cmd + ["--"] + kernel_argv


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-f" not in argv:
        raise SystemExit("usage: python -m utils.grading.kernel -f CONNECTION_FILE")
    connection_file = argv[argv.index("-f") + 1]
    kernel = [sys.executable, "-m", "ipykernel_launcher", *argv]
    set_limits(os.environ.get("COURSE_KERNEL_MEMORY"), os.environ.get("COURSE_KERNEL_CPU"))
    if os.environ.get("COURSE_KERNEL_SANDBOX") == "1":
        workdir = os.environ.get("COURSE_GRADING_NOTEBOOK_DIR") or os.getcwd()
        cmd = sandbox_command(kernel, connection_file, workdir)
        os.execvp(cmd[0], cmd)
    os.execv(kernel[0], kernel)


if __name__ == "__main__":
    main()

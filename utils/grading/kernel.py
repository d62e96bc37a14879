"""The kernel nbgrader starts for autograding: resource limits, and optionally a sandbox.

``python -m utils.grading.kernel -f CONNECTION_FILE`` sets limits on itself, then replaces itself
with an IPython kernel, inside bubblewrap when the sandbox is on. Settings come from the
environment (``nbgrader_config.py`` sets them):

* ``COURSE_KERNEL_MEMORY``: address-space limit, e.g. ``4G``. An allocation beyond it fails
  with MemoryError/RuntimeError inside the learner's code (a verdict for that exercise) instead
  of the operating system killing the kernel, or the grader.
* ``COURSE_KERNEL_CPU``: CPU seconds for the whole notebook (a backstop; cells have timeouts).
* ``COURSE_KERNEL_PROCS``: processes and threads of the kernel's user (a fork bomb fails
  inside the notebook); ``COURSE_KERNEL_FILE_SIZE``: the largest file it may write.
* ``COURSE_KERNEL_SANDBOX``: ``1`` to run the kernel in bubblewrap (``bwrap``, Debian package
  ``bubblewrap``): no network, a private /tmp and home, read-only system and Python, the
  course's toolkit (``utils/`` and ``tests/exercises/``) read-only, and of the course directory
  only the submission being graded (read-write). Other submissions, the gradebook, the
  instructor's source notebooks and the rest of the file system are not there at all.
  The kernel runs as an unprivileged user (``nobody`` when the grader runs as root, otherwise
  the grader's own user) with a minimal environment: nothing of the grader's environment but
  the settings listed in ``KEPT_ENV``.
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


def set_limits(memory: str | None, cpu: str | None, procs: str | None = None, file_size: str | None = None) -> None:
    """Resource limits the kernel (and everything it starts) inherits: address space, CPU
    seconds, processes of its user (a fork bomb fails inside the notebook; enforced once the
    kernel runs as an unprivileged user), and the size of any one file it writes."""
    if procs:
        resource.setrlimit(resource.RLIMIT_NPROC, (int(procs), int(procs)))
    if file_size:
        size = parse_size(file_size)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
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


# The environment a sandboxed kernel gets (besides PATH, HOME, TMPDIR, LANG): how to grade, how
# many threads, and nothing else of the grader's (no tokens, keys or paths of the course).
KEPT_ENV = ("COURSE_GRADING", "COURSE_DEMO_STEPS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED")
NOBODY = 65534


def sandbox_command(kernel_argv: list[str], connection_file: str, workdir: str,
                    drop_to: int | None = None) -> list[str]:
    """bwrap arguments around ``kernel_argv``: see the module docstring for what is visible.

    ``drop_to``: a user id to switch to inside the sandbox, after its mounts are made (when the
    grader runs as root: bwrap keeps just the capabilities to switch, and the switch drops them)."""
    if drop_to is None:
        cmd = ["bwrap", "--unshare-all"]
    else:
        # As root: no user namespace (a namespace's "nobody" would be root outside), the other
        # namespaces as usual.
        cmd = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    cmd += ["--die-with-parent", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", "/home", "--tmpfs", "/root", "--clearenv"]
    for key in KEPT_ENV:
        if os.environ.get(key) is not None:
            cmd += ["--setenv", key, os.environ[key]]
    cmd += ["--setenv", "PATH", os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "--setenv", "LANG", "C.UTF-8"]
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
    binds = [path for path in sorted(pythons, key=len) if not path.startswith("/usr/") and path != "/usr"]
    binds += [str(ROOT / sub) for sub in ("utils", "tests/exercises", "pyproject.toml") if (ROOT / sub).exists()]
    # The folders above each bound path exist in the sandbox only to hold it: make them
    # traversable (bwrap would copy modes such as /root's 0700, closed to an unprivileged user).
    made: set[str] = set()
    for path in binds + [str(Path(connection_file).resolve().parent), workdir]:
        for parent in reversed(Path(path).parents):
            if str(parent) in ("/", "/tmp", "/home", "/run") or str(parent) in made:
                continue
            if not str(parent).startswith(("/usr", "/etc", "/proc", "/dev")):
                made.add(str(parent))
                cmd += ["--perms", "0755", "--dir", str(parent)]
    for path in binds[: len(binds) - sum((ROOT / sub).exists() for sub in ("utils", "tests/exercises", "pyproject.toml"))]:
        cmd += ["--ro-bind", path, path]
    # The toolkit and the exercise checks, not the rest of the course folder (solutions/!).
    for sub in ("utils", "tests/exercises", "pyproject.toml"):
        if (ROOT / sub).exists():
            cmd += ["--ro-bind", str(ROOT / sub), str(ROOT / sub)]
    runtime = str(Path(connection_file).resolve().parent)
    cmd += ["--bind", runtime, runtime, "--bind", workdir, workdir, "--chdir", workdir,
            "--dir", "/home/learner", "--setenv", "HOME", "/home/learner", "--setenv", "TMPDIR", "/tmp",
            "--setenv", "JUPYTER_RUNTIME_DIR", runtime, "--setenv", "MPLCONFIGDIR", "/tmp"]
    if drop_to is not None:
        cmd += ["--chmod", "1777", "/tmp", "--chmod", "0777", "/home/learner"]
        kernel_argv = [sys.executable, "-m", "utils.grading.kernel", "--drop-to", str(drop_to), "--", *kernel_argv]
    return cmd + ["--"] + kernel_argv


def drop_privileges(uid: int) -> None:
    """Become ``uid`` (and its own group) for good: no supplementary groups, no capabilities."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit("could not switch to an unprivileged user")


def _give(paths: list[str], uid: int) -> None:
    """Hand the kernel's own folders (its working copy, its runtime folder) to ``uid``."""
    for top in paths:
        for root, dirs, files in os.walk(top, followlinks=False):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                try:
                    os.chown(name, uid, uid, follow_symlinks=False)
                except OSError:
                    pass


def in_kernel() -> None:
    """Run inside the grading kernel as it starts: ``exit()`` and ``quit()`` (a habit from the
    terminal) would stop the kernel a moment after their cell, and with it every later exercise;
    here they only say so."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.ask_exit = lambda: print("(exit() and quit() do nothing while the notebook is being graded)")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--drop-to"]:  # inside the sandbox, as root without the namespace's privileges
        uid, rest = int(argv[1]), argv[3:]
        drop_privileges(uid)
        os.execv(rest[0], rest)
    if "-f" not in argv:
        raise SystemExit("usage: python -m utils.grading.kernel -f CONNECTION_FILE")
    connection_file = argv[argv.index("-f") + 1]
    kernel = [sys.executable, "-m", "ipykernel_launcher", *argv,
              "--IPKernelApp.exec_lines=__import__('utils.grading.kernel', fromlist=['in_kernel']).in_kernel()"]
    set_limits(os.environ.get("COURSE_KERNEL_MEMORY"), os.environ.get("COURSE_KERNEL_CPU"),
               os.environ.get("COURSE_KERNEL_PROCS"), os.environ.get("COURSE_KERNEL_FILE_SIZE"))
    if os.environ.get("COURSE_KERNEL_SANDBOX") == "1":
        workdir = os.environ.get("COURSE_GRADING_NOTEBOOK_DIR") or os.getcwd()
        drop_to = NOBODY if os.getuid() == 0 else None
        if drop_to is not None:
            _give([workdir, str(Path(connection_file).resolve().parent)], drop_to)
        cmd = sandbox_command(kernel, connection_file, workdir, drop_to)
        os.execvp(cmd[0], cmd)
    os.execv(kernel[0], kernel)


if __name__ == "__main__":
    main()

"""The ``./course`` script: what it installs on each platform and what it starts, run for real
with a stand-in virtual environment (a ``bin/python`` that only records its arguments), so
nothing is installed and no network is used: the torch index is a local HTTP server, or a
port where nothing answers."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class _Index(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        type(self).hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


@pytest.fixture
def index():
    """A reachable wheel index on 127.0.0.1; yields (url, list of paths requested)."""
    _Index.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu", _Index.hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_index():
    """An index that accepts connections and never answers (a firewall that drops)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/whl/cpu"
    finally:
        sock.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/cpu"


def course(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_", "COURSE_"))}
    full.update(env or {})
    return subprocess.run(["bash", str(COURSE), *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout)


def torch_command(**env: str) -> tuple[list[str], str]:
    result = course("torch-command", env=env)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("pip install "), line
    return shlex.split(line)[2:], result.stderr


# --- which torch, on which platform ------------------------------------------------------


def test_the_default_cpu_index_is_pytorchs():
    text = COURSE.read_text(encoding="utf-8")
    assert f'CPU_INDEX="${{COURSE_CPU_INDEX:-{PYTORCH_CPU_INDEX}}}"' in text


def test_linux_installs_the_cpu_build_from_pytorchs_index(index):
    url, hits = index
    args, err = torch_command(COURSE_PLATFORM="Linux", COURSE_CPU_INDEX=url)
    assert args == ["--extra-index-url", url, "torch==2.13.0"]
    assert err == ""
    assert hits == ["/whl/cpu/torch/"], "the probe asks the index for torch's page"


def test_linux_falls_back_to_the_plain_package_with_one_line(index):
    args, err = torch_command(COURSE_PLATFORM="Linux", COURSE_CPU_INDEX=closed_port_url())
    assert args == ["torch==2.13.0"]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0] and "TORCH_INDEX_URL" in lines[0], err


def test_an_index_that_never_answers_costs_only_the_probe_timeout(silent_index):
    start = time.monotonic()
    args, err = torch_command(COURSE_PLATFORM="Linux", COURSE_CPU_INDEX=silent_index, COURSE_INDEX_TIMEOUT="2")
    elapsed = time.monotonic() - start
    assert args == ["torch==2.13.0"] and "cannot be reached in 2 s" in err
    assert elapsed < 30, f"the fall-back took {elapsed:.1f} s"  # 2 s probe; generous for a loaded machine


def test_macos_keeps_the_default_wheel_and_asks_no_index(index):
    url, hits = index
    args, err = torch_command(COURSE_PLATFORM="Darwin", COURSE_CPU_INDEX=url)
    assert args == ["torch==2.13.0"] and err == ""
    assert hits == [], "macOS's default wheel is the CPU build: no index is probed"


def test_overrides_torch_spec_and_index(index):
    url, hits = index
    args, _ = torch_command(COURSE_PLATFORM="Darwin", TORCH_INDEX_URL=url, TORCH_SPEC="torch==2.5.1")
    assert args == ["--extra-index-url", url, "torch==2.5.1"]
    args, err = torch_command(COURSE_PLATFORM="Linux", COURSE_CPU_INDEX=url, TORCH_INDEX_URL="")
    assert args == ["torch==2.13.0"] and err == "", "TORCH_INDEX_URL='' means the plain package, no probe"


# --- set-up and the lab, with a stand-in environment ----------------------------------------


@pytest.fixture
def fake_venv(tmp_path):
    """A virtual environment whose python and jupyter record their arguments (and, for
    jupyter, JUPYTER_CONFIG_PATH) in calls.log instead of doing anything."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    for tool in ("python", "jupyter"):
        script = venv / "bin" / tool
        script.write_text(f'#!/usr/bin/env bash\nprintf "{tool} %s\\n" "$*" >> {shlex.quote(str(log))}\n'
                          f'[ "{tool}" = jupyter ] && echo "JUPYTER_CONFIG_PATH=$JUPYTER_CONFIG_PATH" >> '
                          f'{shlex.quote(str(log))}\nexit 0\n')
        script.chmod(0o755)
    return venv, log


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_the_learners_lab_gets_no_test_extra_and_the_test_suite_does(fake_venv, index):
    venv, log = fake_venv
    url, _ = index
    env = dict(COURSE_VENV=str(venv), COURSE_PLATFORM="Linux", COURSE_CPU_INDEX=url)
    result = course("setup", "lab", env=env)
    assert result.returncode == 0, result.stderr
    installs = [c for c in calls(log) if " -m pip install " in c]
    assert f"python -m pip install --quiet --extra-index-url {url} torch==2.13.0" in installs, installs
    assert f"python -m pip install --quiet -c {venv}/constraints.txt -e ." in installs, installs
    assert "PYTHONWARNINGS=ignore::UserWarning" in COURSE.read_text(), "setuptools' editable-install banner is silenced"
    assert not any("[test]" in c for c in installs), installs
    assert (venv / "constraints.txt").read_text().strip() == "torch==2.13.0"

    # up to date: nothing is installed again
    assert course("setup", "lab", env=env).returncode == 0
    assert calls(log) == []

    # the test suite adds only the test extra, once
    assert course("setup", "test", env=env).returncode == 0
    assert calls(log) == [f"python -m pip install --quiet -c {venv}/constraints.txt -e .[test]"]
    assert course("setup", "test", env=env).returncode == 0
    assert calls(log) == []


def test_lab_opens_the_repository_root_on_chapter_1_without_teacher_tools(fake_venv):
    venv, log = fake_venv
    env = dict(COURSE_VENV=str(venv), COURSE_PLATFORM="Darwin")
    result = course("lab", "--no-browser", env=env)
    assert result.returncode == 0, result.stderr
    lines = calls(log)
    (lab,) = [c for c in lines if c.startswith("jupyter ")]
    assert f"--ServerApp.root_dir={ROOT}" in lab and "chapters/01_transformer_from_scratch.ipynb" in lab, lab
    assert lab.endswith("--no-browser")
    (config,) = [c for c in lines if c.startswith("JUPYTER_CONFIG_PATH=")]
    assert config == f"JUPYTER_CONFIG_PATH={ROOT}/utils/learner_lab"


def test_the_quick_suite_runs_on_a_worker_per_core_and_the_full_suite_in_one_process(fake_venv):
    venv, log = fake_venv
    env = dict(COURSE_VENV=str(venv), COURSE_PLATFORM="Darwin")

    def pytest_call(*args, **extra):
        assert course("test", *args, env={**env, **extra}).returncode == 0
        (run,) = [c for c in calls(log) if " -m pytest" in c]
        return run

    assert pytest_call() == "python -m pytest"  # one process by default: the 2-worker run had a failure still to be explained
    assert pytest_call(COURSE_TEST_WORKERS="2") == "python -m pytest -n 2 --dist loadscope"
    cores = os.sysconf("SC_NPROCESSORS_ONLN")
    quick_workers = " -n 2 --dist load" if cores >= 2 else ""
    assert pytest_call("--quick") == "python -m pytest -m not slow" + quick_workers
    assert pytest_call("--quick", COURSE_TEST_WORKERS="1") == "python -m pytest -m not slow"
    assert pytest_call("--quick", COURSE_TEST_WORKERS="3") == "python -m pytest -m not slow -n 3 --dist load"
    assert pytest_call("--quick", "-k", "layernorm") == "python -m pytest -m not slow -k layernorm"
    assert pytest_call(COURSE_TEST_WORKERS="3") == "python -m pytest -n 3 --dist loadscope"
    # a run of your own choosing (a file, -k, your own -n) stays as you asked
    assert pytest_call("tests/test_checks.py") == "python -m pytest tests/test_checks.py"
    assert pytest_call("-k", "layernorm") == "python -m pytest -k layernorm"
    assert pytest_call("-n", "4", COURSE_TEST_WORKERS="2") == "python -m pytest -n 4"


def test_learner_lab_config_disables_every_nbgrader_extension():
    import json
    from importlib import metadata

    server = json.loads((ROOT / "utils/learner_lab/jupyter_server_config.json").read_text())
    disabled = server["ServerApp"]["jpserver_extensions"]
    # every server extension that nbgrader enables on install
    dist = metadata.distribution("nbgrader")
    enabled = {}
    for f in dist.files or []:
        if str(f).endswith(".json") and "jupyter_server_config.d" in str(f):
            enabled.update(json.loads(Path(dist.locate_file(f)).read_text())["ServerApp"]["jpserver_extensions"])
    assert enabled, "nbgrader's server extension config was not found"
    assert {k: False for k in enabled} == disabled
    page = json.loads((ROOT / "utils/learner_lab/labconfig/page_config.json").read_text())
    assert page == {"disabledExtensions": {"@jupyter/nbgrader": True}}


# --- the small things ----------------------------------------------------------------------


def test_an_unknown_command_fails_with_the_usage():
    result = course("foo")
    assert result.returncode != 0
    assert "unknown command 'foo'" in result.stderr and "./course lab" in result.stderr
    help_ = course("help")
    assert help_.returncode == 0 and "./course test --quick" in help_.stdout


def test_the_script_avoids_what_macos_bash_3_lacks():
    """macOS runs /bin/bash 3.2: no mapfile, and an empty "${a[@]}" is an error under set -u."""
    text = COURSE.read_text(encoding="utf-8")
    assert "mapfile" not in text and "readarray" not in text
    bare = re.findall(r'(?<![+])"\$\{(\w+)\[@\]\}"', text)
    guarded = set(re.findall(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', text))
    assert set(bare) - guarded <= {"torch_args"}, f"unguarded array expansions: {set(bare) - guarded}"
    assert "sha256sum" in text and "shasum -a 256" in text


def test_binder_starts_the_learners_lab_too():
    start = ROOT / "binder" / "start"
    assert os.access(start, os.X_OK), "binder/start must be executable"
    text = start.read_text(encoding="utf-8")
    assert 'JUPYTER_CONFIG_PATH="${REPO_DIR:-$HOME}/utils/learner_lab' in text
    assert text.rstrip().endswith('exec "$@"'), "binder/start must end by running the server"
    env = {**os.environ, "REPO_DIR": str(ROOT)}
    env.pop("JUPYTER_CONFIG_PATH", None)
    out = subprocess.run([str(start), "bash", "-c", 'echo "$JUPYTER_CONFIG_PATH"'], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"{ROOT}/utils/learner_lab"


def test_every_relative_link_in_the_notebooks_opens_a_file():
    """Links such as [utils/training.py](../utils/training.py) open in JupyterLab, whose root
    ``./course lab`` sets to the repository."""
    import nbformat

    links = 0
    for folder in ("solutions", "chapters"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            for cell in nbformat.read(path, as_version=4).cells:
                if cell.cell_type != "markdown":
                    continue
                for target in re.findall(r"\]\(([^)\s]+)\)", cell.source):
                    if re.match(r"[a-z]+:|#", target):
                        continue
                    links += 1
                    assert (path.parent / target.split("#")[0]).is_file(), f"{path.name}: broken link {target}"
    assert links >= 6, "chapter 1 links to its solutions and to the toolkit files it tells you to read"


def test_pyproject_license_is_an_spdx_string():
    """The table form (license = {text = ...}) makes setuptools print deprecation banners on install."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in project["build-system"]["requires"]), "SPDX license strings need setuptools >= 77"

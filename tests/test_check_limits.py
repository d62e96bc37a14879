"""Time limits that give the right verdict on a busy machine and in a fresh kernel, and a
checker that never lets anything but CheckFailed escape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from utils import transformer as ref
from utils.checks import CheckFailed, check, core, get_exercise

ROOT = Path(__file__).resolve().parents[1]


def failure(name, impl) -> str:
    with pytest.raises(CheckFailed) as info:
        check(name, impl)
    return str(info.value)


def test_first_training_check_in_a_fresh_kernel_survives_torchs_lazy_import():
    """The first optimizer.step() imports torch._dynamo (seconds; 28 s on a loaded machine).
    With a limit far below that import, a correct train_step still passes (the checker warms
    torch up before any limit starts), the import finishes (no half-initialised module), and a
    second training check works."""
    script = textwrap.dedent("""
        import sys, torch
        assert "torch._dynamo" not in sys.modules, "torch._dynamo already imported: the test proves nothing"
        from utils.checks import check, core, get_exercise
        core._reference_seconds = lambda exercise, case: 0.0   # no slow-machine allowance: only the import rule
        for name in ("train_step", "toy_train_step"):
            get_exercise(name).time_limit = 0.5   # far below the ~2 s CPU the import takes
        from utils.transformer import lm_cross_entropy
        def train_step(model, optimizer, tokens):
            loss = lm_cross_entropy(model(tokens), tokens)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            return loss.item()
        check("train_step", train_step)
        import torch._dynamo
        assert callable(torch._dynamo.reset), "torch._dynamo was left half-initialised"
        def toy_train_step(model, optimizer, x, importance):
            out = model(x)
            loss = (importance * (x - out) ** 2).mean(dim=(0, 2)).sum()
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            return loss.item()
        check("toy_train_step", toy_train_step)
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


def _slow_module(folder, name: str, seconds: float) -> None:
    """A module that computes for ``seconds`` of CPU while it is imported."""
    (folder / f"{name}.py").write_text(textwrap.dedent(f"""
        import time
        start = time.process_time()
        while time.process_time() - start < {seconds}:
            pass
        READY = True
    """))


def _compute(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_a_slow_import_is_never_interrupted_and_does_not_count(tmp_path, monkeypatch):
    """An import that computes for 4 × the limit (caught by the alarm in mid-import) finishes
    whole, then the code after it gets a full budget; an infinite loop after it is still
    stopped."""
    _slow_module(tmp_path, "slow_to_import", 1.2)
    monkeypatch.syspath_prepend(str(tmp_path))
    with core.time_limit(0.3):
        import slow_to_import
        _compute(0.2)  # under the limit, once the import is done
    assert slow_to_import.READY

    import importlib
    with pytest.raises(core._Timeout):
        with core.time_limit(0.3):
            importlib.reload(slow_to_import)
            while True:
                pass


def test_importing_in_a_loop_is_still_stopped(tmp_path, monkeypatch):
    import importlib

    _slow_module(tmp_path, "takes_a_while", 0.2)
    monkeypatch.syspath_prepend(str(tmp_path))
    import takes_a_while

    def reload_forever(between: float = 0.0):
        start = time.process_time()  # CPU, not wall-clock, time: the bounds leave out waiting for a CPU
        with pytest.raises(core._Timeout):
            with core.time_limit(0.1):
                while True:
                    importlib.reload(takes_a_while)
                    _compute(between)
        assert time.process_time() - start < 30

    # stopped by the time bound on excused imports...
    monkeypatch.setattr(core, "MAX_IMPORT_WAIT", 2.0)
    monkeypatch.setattr(core, "WALL_SLACK", 1.0)
    reload_forever()
    # ...and by the bound on fresh budgets, for a loop that computes between imports
    monkeypatch.setattr(core, "MAX_IMPORT_WAIT", 300.0)
    monkeypatch.setattr(core, "MAX_IMPORT_RESTARTS", 3)
    reload_forever(between=0.3)


def _hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_a_correct_answer_passes_on_a_loaded_machine(monkeypatch):
    """A limit of 3 × the reference's CPU time, with twice as many busy processes as cores
    beside it: the wall-clock time of the check exceeds the limit, the CPU time does not."""
    ex = get_exercise("patch_head_outputs")
    start = time.process_time()
    for case in ex.cases:
        core.run_case(ex, case, ex.reference, guarded=False)
    reference = time.process_time() - start
    monkeypatch.setattr(ex, "time_limit", max(3 * reference / len(ex.cases), 0.2))
    monkeypatch.setattr(core, "_reference_seconds", lambda exercise, case: 0.0)
    hogs = _hogs(2 * (os.cpu_count() or 2))
    try:
        time.sleep(0.5)
        wall = time.monotonic()
        check("patch_head_outputs", ex.reference.__wrapped__ if hasattr(ex.reference, "__wrapped__") else _copy_of(ex.reference))
        wall = time.monotonic() - wall
    finally:
        for h in hogs:
            h.kill()
    print(f"limit {ex.time_limit:.2f} s CPU per case; check took {wall:.2f} s wall under load")


def _copy_of(fn):
    """The reference's code as a function of the learner's (check() refuses the reference itself)."""
    import types
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def test_waiting_forever_is_stopped_by_the_cap(monkeypatch):
    monkeypatch.setattr(get_exercise("layernorm"), "time_limit", 0.3)
    monkeypatch.setattr(core, "WALL_SLACK", 1.0)

    class Sleeps(ref.LayerNorm):
        def forward(self, x):
            while True:
                time.sleep(0.05)

    start = time.monotonic()
    msg = failure("layernorm", Sleeps)
    assert time.monotonic() - start < 30
    assert "and was stopped" in msg and "input" in msg and "infinite loop" in msg


@pytest.mark.parametrize("schedstat", [True, False], ids=["schedstat", "plain-wall-clock"])
def test_a_sleeping_loop_stops_at_the_cap_and_a_computing_loop_at_the_cpu_limit(monkeypatch, schedstat):
    """The two infinite loops the limit exists for, timed: waiting stops at the cap
    (max(3 × limit, limit + WALL_SLACK) of time not spent waiting for a CPU), computing stops
    once the process has used the limit's CPU time. Also where schedstat cannot be read."""
    if not schedstat:
        monkeypatch.setattr(core, "_run_queue_waits", lambda: None)
    monkeypatch.setattr(core, "WALL_SLACK", 0.0)
    limit, cap = 0.3, 0.9
    wall, cpu = time.monotonic(), time.process_time()
    with pytest.raises(core._Timeout):
        with core.time_limit(limit):
            while True:
                time.sleep(0.02)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert cap - 0.05 <= wall < 10 and cpu < limit, (wall, cpu)

    cpu = time.process_time()
    with pytest.raises(core._Timeout):
        with core.time_limit(limit):
            while True:
                pass
    cpu = time.process_time() - cpu
    # (on the plain wall clock, a loaded machine may stop it at the cap first: what schedstat fixes)
    assert limit <= cpu < limit + 0.3 or not schedstat and cpu < limit, cpu


_STARVED = textwrap.dedent("""
    import json, os, subprocess, sys, threading, time
    from utils.checks import core

    LIMIT, WORK = 0.1, 0.02   # CPU seconds; the old wall-clock cap was 3 × LIMIT
    core.WALL_SLACK = 0.0

    def compute(seconds):
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass

    def computes():
        compute(WORK)

    def in_a_thread():   # the main thread blocks while another computes (as in torch's thread pool)
        worker = threading.Thread(target=compute, args=(WORK,))
        worker.start()
        worker.join()

    def sleeps():
        while True:
            time.sleep(0.1)

    def timed(fn):
        wall = time.monotonic()
        try:
            with core.time_limit(LIMIT):
                fn()
            verdict = "completed"
        except core._Timeout:
            verdict = "stopped"
        return verdict, time.monotonic() - wall

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})   # one core, shared with a busy process
    busy = f"import os\\nwhile os.getppid() == {os.getpid()}: pass"   # ends when this process does
    hog = subprocess.Popen([sys.executable, "-c", busy])
    try:
        time.sleep(0.3)
        os.nice(19)   # the busy process keeps nice 0: this one gets about 1.5 % of the core
        print(json.dumps({fn.__name__: timed(fn) for fn in (computes, in_a_thread, sleeps)}), flush=True)
    finally:
        hog.kill()
    os._exit(0)   # at nice 19, torch's clean-up at exit would take many seconds on a loaded machine
""")


def test_a_cpu_starved_correct_answer_is_not_stopped():
    """On one core shared with a busy process at a higher priority, code that needs 0.02 s of
    CPU takes over a second of wall-clock time (4 s on an idle 2-core machine with the test's
    start-up, 12 s beside 4 busy processes), far beyond the old wall-clock cap (3 × the 0.1 s
    limit): it completes, also when a worker thread computes while the main thread waits. A
    sleeping loop on the same starved core is still stopped at the cap."""
    why = None
    if not hasattr(os, "sched_setaffinity"):
        why = "os.sched_setaffinity is unavailable (not Linux)"
    elif core._run_queue_waits() is None:
        why = "/proc/self/task/*/schedstat is unreadable (the limit falls back to the plain wall clock)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}. In CI this test must run, not be skipped.")
        pytest.skip(why)
    result = subprocess.run([sys.executable, "-c", _STARVED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    print(runs)
    for name in ("computes", "in_a_thread"):
        verdict, wall = runs[name]
        assert wall > 3 * 0.1, f"{name} was not starved ({wall:.2f} s wall): the test proves nothing"
        assert verdict == "completed", f"{name}: a correct answer was stopped after {wall:.2f} s of waiting for a CPU"
    verdict, wall = runs["sleeps"]
    assert verdict == "stopped" and wall < 10, runs


def test_the_slow_case_is_named(monkeypatch):
    ex = get_exercise("layernorm")
    monkeypatch.setattr(ex, "time_limit", 0.3)

    class SlowOnBigInputs(ref.LayerNorm):
        def forward(self, x):
            if x.shape[0] > 2:
                while True:
                    pass
            return super().forward(x)

    msg = failure("layernorm", SlowOnBigInputs)
    assert "and was stopped" in msg, msg
    named = [c for c in ex.cases if f"on input {ex.describe(c)} and was stopped" in msg]
    assert named and named[0] is not ex.cases[0] or len(ex.cases) == 1, msg


def test_a_misspelled_forward_is_named():
    class Foward(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(cfg.d_model))
            self.b = torch.nn.Parameter(torch.zeros(cfg.d_model))

        def foward(self, x):
            return x

    msg = failure("layernorm", Foward)
    assert "no `forward` method" in msg and "`foward`: did you mean `forward`?" in msg
    assert "not implemented" not in msg

    class NoForward(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(cfg.d_model))
            self.b = torch.nn.Parameter(torch.zeros(cfg.d_model))

    msg = failure("layernorm", NoForward)
    assert "no `forward` method" in msg and "did you mean" not in msg


def test_nothing_but_checkfailed_escapes(monkeypatch):
    ex = get_exercise("layernorm")

    def broken_run(impl, ctx):
        raise KeyError("an internal key")

    monkeypatch.setattr(ex, "run", broken_run)
    msg = failure("layernorm", type("Mine", (ref.LayerNorm,), {}))
    assert "the check itself could not finish" in msg and "KeyError" in msg and "Restart the kernel" in msg


def test_outputs_the_judge_cannot_compare_get_a_verdict(monkeypatch):
    ex = get_exercise("layernorm")

    def odd_judge(exercise, outputs, references, mistakes):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(ex, "judge", odd_judge)
    msg = failure("layernorm", type("Mine", (ref.LayerNorm,), {}))
    assert "could not be compared with the reference" in msg


def test_verdicts_name_outputs_not_internal_keys():
    def train_step(model, optimizer, tokens):  # forgets optimizer.step()
        from utils.transformer import lm_cross_entropy
        loss = lm_cross_entropy(model(tokens), tokens)
        optimizer.zero_grad(); loss.backward()
        return loss.item()

    msg = failure("train_step", train_step)
    assert "your output `losses`" in msg and "['" not in msg

    class Shifted(ref.LayerNorm):
        def forward(self, x):
            return super().forward(x) + 1.0

    msg = failure("layernorm", Shifted)
    assert "your output differs" in msg and "['out']" not in msg, msg


# --- notes: accepted, but worth a line in the verdict ---------------------------------------


def passes_with(capsys, name, impl) -> str:
    check(name, impl)
    out = capsys.readouterr().out
    assert f"✓ {name}" in out, out
    return out


def test_printing_megabytes_is_cut_and_noted(capsys):
    class Chatty(ref.LayerNorm):
        def forward(self, x):
            for _ in range(200):
                print(x.tolist())
            return super().forward(x)

    out = passes_with(capsys, "layernorm", Chatty)
    assert "note: your code printed" in out and ("MB" in out or "kB" in out), out[-500:]
    assert len(out) < 6000, f"{len(out)} characters reached the notebook"


def test_float64_output_is_noted(capsys):
    class Doubles(ref.LayerNorm):
        def forward(self, x):
            return super().forward(x.double())

    out = passes_with(capsys, "layernorm", Doubles)
    assert "note: your output is float64 where the reference is float32" in out


def test_reseeding_inside_learner_code_is_noted(capsys):
    class Reseeds(ref.LayerNorm):
        def forward(self, x):
            torch.manual_seed(0)
            return super().forward(x)

    out = passes_with(capsys, "layernorm", Reseeds)
    assert "calls torch.manual_seed" in out


def test_a_plain_correct_answer_gets_no_notes(capsys):
    out = passes_with(capsys, "layernorm", type("Mine", (ref.LayerNorm,), {}))
    assert "note:" not in out

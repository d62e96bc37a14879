"""The check runner: run a learner's code on chosen inputs, then judge the outputs.

An exercise (see ``tests/exercises/``) declares

* ``run(impl, ctx) -> dict``: builds seeded inputs, calls the learner's object through ``ctx``
  and returns its outputs (tensors, numbers);
* ``reference``: the toolkit's correct implementation, run through the same ``run``;
* ``mistakes``: realistic wrong implementations with the hint a learner should read. A
  learner's output that matches a mistake's output names that mistake.

The two steps stay apart. ``collect(exercise, impl)`` is the only step that touches learner
code, under guards (time limit, exceptions, in-place edits, RNG state); ``judge(exercise,
outputs)`` sees nothing but the outputs, so it can run in another process that the learner's
code never reaches (for grades that cannot be faked).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Declaring exercises
# ---------------------------------------------------------------------------------------------


@dataclass
class Mistake:
    """A realistic learner mistake: a wrong implementation (``impl``) or a predicate (``detect``)."""

    name: str
    hint: str
    impl: Any = None
    detect: Callable[[dict, dict], bool] | None = None  # (got, want) of one case -> matches?


@dataclass
class Exercise:
    name: str
    title: str
    reference: Any
    run: Callable[[Any, "RunContext"], dict[str, Any]]
    cases: list[dict]
    mistakes: list[Mistake] = field(default_factory=list)
    kind: str = "class"  # "class": an nn.Module subclass; "function": a callable
    judge: Callable[..., None] | None = None  # default: judge_close
    atol: float = 1e-4
    rtol: float = 1e-4
    time_limit: float = 10.0  # CPU seconds per case (raised to 20 × the reference's time on slow machines)
    stuck: str = ""  # what to read if stuck
    uses: str = ""  # earlier exercises this one builds on (named when it fails)
    chapter: str = ""
    # Hidden tests (nbgrader's hidden test region, used when grading): extra inputs, e.g. other
    # shapes. Every hidden case, and every visible case, is run with a seed the learner has not
    # seen (see ``hidden_suite``), so a submission tuned to the visible check does not pass.
    hidden_cases: list[dict] = field(default_factory=list)
    # Case keys that select what ``run`` does rather than an input (reviewed; every other case
    # key must take at least two values across the visible cases, see tests/test_exercises.py).
    fixed: tuple[str, ...] = ()

    def hidden_suite(self, secret: int = 0) -> "Exercise":
        """This exercise on its hidden cases: every visible case as it is, then the visible
        cases and ``hidden_cases`` reseeded from ``secret`` (a fresh random number for each
        grading run; 0 elsewhere)."""
        rng = random.Random(f"{self.name}:{secret}")
        reseeded = [{**case, "seed": rng.randrange(10_000, 2**31)} for case in [*self.cases, *self.hidden_cases]]
        # The visible cases themselves come first, unchanged: the hidden suite is a superset of
        # the visible check, so it never accepts an answer that the visible check rejects.
        return replace(self, cases=[dict(case) for case in self.cases] + reseeded, hidden_cases=[])

    def describe(self, case: dict) -> str:
        return case.get("describe") or ", ".join(f"{k}={v}" for k, v in case.items() if k != "seed")


class CheckFailed(AssertionError):
    """A failed check. Shown in IPython as the verdict alone, without the checker's traceback."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


class _Timeout(BaseException):
    """Raised inside the learner's code when the time limit is hit (BaseException, so that a
    learner's ``except Exception`` cannot swallow it)."""


class LearnerError(Exception):
    """Something went wrong *in the learner's code* while running it."""

    def __init__(self, message: str, not_implemented: bool = False):
        super().__init__(message)
        self.not_implemented = not_implemented


# ---------------------------------------------------------------------------------------------
# Running the learner's code
# ---------------------------------------------------------------------------------------------

_CHECKER_FILES = (str(Path(__file__).resolve().parent),)


def _is_checker_frame(filename: str) -> bool:
    try:
        path = str(Path(filename).resolve())
    except (OSError, ValueError):
        return False
    return path.startswith(_CHECKER_FILES) or "/tests/exercises/" in path.replace("\\", "/")


def learner_traceback(exc: BaseException) -> str:
    """Format an exception keeping only the learner's frames (and what they called)."""
    tb = exc.__traceback__
    # the checker's frames, then torch's module-call plumbing (Module.__call__) before your forward
    while tb is not None and (_is_checker_frame(tb.tb_frame.f_code.co_filename)
                              or tb.tb_frame.f_code.co_filename.replace("\\", "/").endswith("torch/nn/modules/module.py")):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


@contextlib.contextmanager
def preserved_state() -> Iterator[None]:
    """Leave global RNG state, grad mode, default dtype and thread count exactly as they were."""
    py_state = random.getstate()
    np_state = None
    np = sys.modules.get("numpy")
    if np is not None:
        np_state = np.random.get_state()
    grad = torch.is_grad_enabled()
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    # Check inputs are tiny: one thread is faster, and far faster on a busy machine.
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            if np_state is not None:
                np.random.set_state(np_state)
            torch.set_grad_enabled(grad)
            torch.set_default_dtype(dtype)
            torch.set_num_threads(threads)


WALL_SLACK = 30.0  # seconds of waiting (no computing) allowed beyond the limit


def _in_import(frame: types.FrameType | None) -> bool:
    """Is this frame (or a caller) executing an ``import``?"""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _run_queue_waits() -> dict[int, int] | None:
    """Nanoseconds each live thread of this process has spent runnable but waiting for a CPU
    (the second number of Linux's ``/proc/self/task/<tid>/schedstat``), or None where that
    cannot be read. (``/proc/self/schedstat`` would give only the main thread's.)"""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    waits = {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                waits[int(tid)] = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the thread has just exited
    return waits or None


class _UnstarvedClock:
    """Wall-clock seconds less the time this process waited for a CPU: on one thread, exactly
    the time spent computing or sleeping (blocked), which a loaded machine does not stretch.

    Each interval between two readings counts its wall time less the run-queue wait that all of
    the process's threads added in it, clamped at zero (so a stretch of starved parallel work
    banks no credit for later sleeping). The threads' waits are summed: where several wait at
    once this overstates the waiting, so the clock errs towards counting too little, never
    stopping honest code early. Summing over all threads, not the main thread's alone, is what
    keeps a main thread that blocks while starved worker threads compute (torch's thread pool,
    ``Thread.join``) from looking asleep: the workers' waits cover that time. Time blocked on
    anything but a CPU (sleep, I/O, page faults) still counts. Where Linux schedstat cannot be
    read, this is the plain wall clock."""

    def __init__(self) -> None:
        self.total = 0.0
        self._wall = time.monotonic()
        self._waits = _run_queue_waits()

    def read(self) -> float:
        now = time.monotonic()
        span, self._wall = now - self._wall, now
        if self._waits is not None:
            waits = _run_queue_waits()
            if waits is not None:
                # a thread that is new since the last reading (or a reused id) waited all of it now
                starved = sum(w - self._waits.get(t, 0) if w >= self._waits.get(t, 0) else w
                              for t, w in waits.items()) / 1e9
                span -= min(span, starved)
                self._waits = waits
        self.total += span
        return self.total


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt Python code that computes for longer than ``seconds`` (POSIX main thread
    only; elsewhere the code simply runs unlimited).

    Made for busy machines and fresh kernels; the verdict does not depend on how busy:

    * the budget is CPU time of this process (all its threads), so a machine busy with other
      work stretches the wall-clock time but does not trip the limit;
    * code that waits without computing (``time.sleep`` in a loop) is stopped at a cap of
      max(3 × limit, limit + WALL_SLACK (30 s)) on the wall clock less the time the process's
      threads spent waiting for a CPU (Linux ``/proc/self/task/*/schedstat``; see
      ``_UnstarvedClock``). A CPU-starved process accumulates run-queue wait, a sleeping one
      does not, so a correct answer that a loaded machine stretches to many times its wall time
      is not stopped, and on an idle machine the cap is the plain wall clock, as it always was.
      Where schedstat cannot be read (not Linux), the cap is on the plain wall clock;
    * an ``import`` is never interrupted (torch imports ``torch._dynamo`` on the first
      ``optimizer.step()``, 10-30 s on a loaded machine): the limit waits for it to finish, and
      then the budget starts again in full. An interrupted import would leave a
      half-initialised module behind, breaking every later check in that kernel. (``collect``
      also calls ``warm_up`` first, so torch's known lazy imports happen before any limit.)
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    tick = 0.25
    cap = max(3 * seconds, seconds + WALL_SLACK)
    # The budget starts now, and starts again in full when an import that the alarm caught
    # has finished: how long the import ran before the alarm saw it is unknown, so none of
    # it may count. (Bounded, so that code that imports in a loop is still stopped.) Times
    # are on the clock that leaves out waiting for a CPU.
    clock = _UnstarvedClock()
    state = {"since": 0.0, "cpu": time.process_time(), "importing": False, "restarts": 0}

    def on_alarm(signum, frame):
        waited = clock.read()
        if (_in_import(frame) and state["restarts"] < MAX_IMPORT_RESTARTS
                and waited < MAX_IMPORT_WAIT + cap):
            state["importing"] = True
            signal.setitimer(signal.ITIMER_REAL, tick)
            return
        if state["importing"]:
            state.update(since=waited, cpu=time.process_time(), importing=False,
                         restarts=state["restarts"] + 1)
            signal.setitimer(signal.ITIMER_REAL, seconds)
            return
        cpu = time.process_time() - state["cpu"]
        wall = waited - state["since"]
        if cpu < seconds and wall < cap:
            signal.setitimer(signal.ITIMER_REAL, max(min(seconds - cpu, cap - wall), 0.05))
            return
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Imports are excused within bounds, so that code that imports in a loop is still stopped: a
# fresh budget after each of at most MAX_IMPORT_RESTARTS caught imports, and no excuse at all
# once the limit has run for MAX_IMPORT_WAIT seconds beyond its own cap (on the same clock).
MAX_IMPORT_RESTARTS = 20
MAX_IMPORT_WAIT = 300.0

_warmed_up = False


def warm_up() -> None:
    """Do, once per process and outside any time limit, what torch does lazily the first time a
    learner's code trains: the first ``optimizer.step()`` imports ``torch._dynamo`` (about 1 s of
    CPU on an idle machine, 10-30 s of wall time on a loaded one)."""
    global _warmed_up
    if _warmed_up:
        return
    _warmed_up = True
    try:
        with preserved_state():
            p = nn.Parameter(torch.zeros(2))
            for optimizer in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
                opt = optimizer([p], lr=1e-3)
                (p * p).sum().backward()
                opt.step()
                opt.zero_grad()
    except Exception:  # noqa: BLE001 (a warm-up only; the checks themselves will say what fails)
        pass


def _cpu_seconds(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    try:
        fn()
    except Exception:
        pass
    return time.process_time() - start


def _arg_names(fn: Callable, args: tuple) -> list[str]:
    try:
        target = fn.forward if isinstance(fn, nn.Module) else fn
        params = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"argument {i}" for i in range(len(args))]


def reference_code(reference: Any) -> list[types.CodeType]:
    """The code objects of a reference implementation: a function's own code (unwrapped from
    decorators such as ``torch.no_grad()``, whose wrapper is torch's and shared by every
    decorated function), or the methods a reference class and its bases from the same module
    define (except ``__init__``: a learner's class may inherit the provided constructor without
    copying the solution)."""
    fns = []
    if inspect.isclass(reference):
        for klass in reference.__mro__:
            # The reference's own classes only: base classes from elsewhere (torch, the hook
            # machinery in utils.hooks) are not the solution, and a learner may inherit them.
            if klass.__module__ != reference.__module__:
                continue
            fns += [v for k, v in vars(klass).items() if k != "__init__"]
    else:
        fns.append(reference)
    # A list, not a set: code objects compare equal by content, and two equal methods must
    # both be watched (``watching`` matches by identity).
    codes = []
    for fn in fns:
        fn = getattr(fn, "__func__", fn)
        try:
            fn = inspect.unwrap(fn)
        except ValueError:
            pass
        code = getattr(fn, "__code__", None)
        if code is not None:
            codes.append(code)
    return codes


def _library_prefixes() -> tuple[str, ...]:
    """Where Python's own library and installed packages live: code from there is not the
    learner's (a copy of the course's toolkit written anywhere else, or rebuilt from code
    objects, is)."""
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            paths.add(sysconfig.get_path(key))
        except KeyError:
            pass
    return tuple(sorted(os.path.join(p, "") for p in paths if p)) + ("<frozen",)


_TOOLKIT_CODES: tuple[frozenset[str], set[int]] = (frozenset(), set())


def _toolkit_code_ids() -> set[int]:
    """Identities of the code objects of the course's own modules, as loaded (``utils.*``, the
    exercises): running them is using the toolkit, which later chapters do on purpose; running
    a *copy* of them (another code object with the same bytecode) is what copy detection is for."""
    global _TOOLKIT_CODES
    names = frozenset(n for n, m in list(sys.modules.items())
                      if m is not None and n.startswith(("utils.", "_course_exercises")))
    if names == _TOOLKIT_CODES[0]:
        return _TOOLKIT_CODES[1]
    ids: set[int] = set()

    def add_code(code: Any) -> None:
        if isinstance(code, types.CodeType) and id(code) not in ids:
            ids.add(id(code))
            for const in code.co_consts:
                add_code(const)

    def add(value: Any, depth: int = 0) -> None:
        value = getattr(value, "__func__", value)
        for attr in ("fget", "fset", "fdel"):
            add(getattr(value, attr, None), depth + 1) if isinstance(value, property) else None
        try:
            value = inspect.unwrap(value) if callable(value) else value
        except ValueError:
            pass
        add_code(getattr(value, "__code__", None))
        if inspect.isclass(value) and depth == 0:
            for member in vars(value).values():
                add(member, depth + 1)

    for name in names:
        for value in list(vars(sys.modules[name]).values()):
            add(value)
    _TOOLKIT_CODES = (names, ids)
    return ids


@contextlib.contextmanager
def watching(codes: list[types.CodeType] | None, hits: list[str],
             executed: dict[int, types.CodeType] | None = None) -> Iterator[None]:
    """Note in ``hits`` every call into one of ``codes`` (the reference) while the block runs, and
    (with a dict as ``executed``) every code object called that is not Python's or an installed
    package's, for the grader's copy detection (``utils.grading.copies``)."""
    if not codes and executed is None:
        yield
        return

    ids = {id(code) for code in codes or ()}  # identity: equal code compiled elsewhere is not the reference
    library = _library_prefixes() if executed is not None else ()
    toolkit = _toolkit_code_ids() if executed is not None else set()

    def profiler(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if id(code) in ids:
            hits.append(code.co_qualname if hasattr(code, "co_qualname") else code.co_name)
        if (executed is not None and id(code) not in executed and id(code) not in toolkit
                and not code.co_filename.startswith(library)):
            executed[id(code)] = code

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield
    finally:
        sys.setprofile(previous)


class RunContext:
    """What an exercise's ``run`` gets: seeded inputs and guarded calls into learner code."""

    def __init__(self, exercise: Exercise, case: dict, guarded: bool, watch: list | None = None,
                 hits: list[str] | None = None, notes: list[str] | None = None,
                 executed: dict | None = None):
        self.exercise = exercise
        self.notes = notes if notes is not None else []  # one-line remarks for the verdict
        self.case = case
        self.guarded = guarded
        self.gen = torch.Generator().manual_seed(case.get("seed", 0))
        # When grading: the reference's code objects, and where calls into them are noted.
        self.watch = watch
        self.hits = hits if hits is not None else []
        self.executed = executed  # when grading: code objects the learner's code ran

    # -- seeded inputs (identical for the reference, the mistakes and the learner) --
    def randn(self, *shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(shape, generator=self.gen) * scale

    def randint(self, high: int, *shape: int) -> Tensor:
        return torch.randint(0, high, shape, generator=self.gen)

    def seed_globals(self) -> None:
        """Seed the global RNGs (for code that samples), inside the preserved state."""
        seed = self.case.get("seed", 0)
        torch.manual_seed(seed)
        random.seed(seed)

    def random_params(self, module: nn.Module) -> dict[str, Tensor]:
        """Random values for every parameter: gains near 1, everything else small and non-zero,
        so that a forgotten bias or gain shows."""
        params = {}
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=self.gen)
            if leaf == "w":  # LayerNorm gain
                params[name] = 1.0 + 0.2 * noise
            elif leaf.startswith("b"):  # biases
                params[name] = 0.2 * noise
            else:  # weights: unit-variance outputs for unit-variance inputs
                params[name] = noise / math.sqrt(p.shape[-2] if p.ndim >= 2 else 1)
        return params

    def make(self, cls: Any, *args, reference: Any = None, **kwargs) -> nn.Module:
        """Instantiate ``cls(*args)`` and give it the same random parameters as the reference."""
        reference = reference or self.exercise.reference
        template = reference(*args, **kwargs)
        params = self.random_params(template)
        obj = self.call(cls, *args, **kwargs) if self.guarded else cls(*args, **kwargs)
        if not isinstance(obj, nn.Module):
            raise LearnerError(f"{_name(cls)}(cfg) returned a {type(obj).__name__}, not a torch.nn.Module.")
        load_parameters(obj, params, owner=_name(cls))
        return obj

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """Call learner code: exceptions become a verdict, inputs must not be modified."""
        if not self.guarded:
            return fn(*args, **kwargs)
        _require_forward(fn)
        names = _arg_names(fn, args)
        before = [(n, a, a.detach().clone()) for n, a in zip(names, args) if isinstance(a, Tensor)]
        seed = torch.initial_seed()
        try:
            with watching(self.watch, self.hits, self.executed):
                out = fn(*args, **kwargs)
        except (_Timeout, LearnerError):
            raise
        except NotImplementedError as e:
            raise LearnerError("not implemented yet", not_implemented=True) from e
        except Exception as e:  # the learner's own error: show it with the learner's frames
            raise LearnerError(
                f"your code raised {type(e).__name__} on input {self.exercise.describe(self.case)}:\n\n"
                + learner_traceback(e)
            ) from e
        if torch.initial_seed() != seed:
            _note(self.notes, f"your {_name(fn)} calls torch.manual_seed: then every call repeats the same random "
                  "numbers. Seed once, at the top of a notebook or script, never inside a function.")
        for n, a, copy in before:
            if a.shape != copy.shape or not torch.equal(a.detach(), copy):
                raise LearnerError(
                    f"your code modified its input `{n}` in place (for example `x -= ...`, `x[...] = ...`"
                    " or a method ending in `_` such as `x.sub_()`).\n"
                    "Work on a new tensor instead (`x = x - ...`): callers still need the original."
                )
        return out


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


class _PrintLimit:
    """sys.stdout while learner code runs: passes the first ``limit`` characters through,
    counts the rest (a print in a loop over a whole tensor can send megabytes to the notebook)."""

    def __init__(self, real, limit: int = 4000):
        self.real, self.limit, self.chars, self.lines = real, limit, 0, 0

    def write(self, text: str) -> int:
        text = str(text)
        shown = max(0, self.limit - self.chars)
        self.chars += len(text)
        self.lines += text.count("\n")
        if shown:
            self.real.write(text[:shown])
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name):  # encoding, isatty, ...
        return getattr(self.real, name)


@contextlib.contextmanager
def print_limit(notes: list[str], title: str, limit: int = 4000) -> Iterator[None]:
    real = sys.stdout
    counter = _PrintLimit(real, limit)
    sys.stdout = counter
    try:
        yield
    finally:
        sys.stdout = real
        if counter.chars > limit:
            size = f"{counter.chars / 1e6:.1f} MB" if counter.chars >= 1e6 else f"{counter.chars / 1e3:.0f} kB"
            _note(notes, f"your code printed {size} ({counter.lines} lines) while being checked; only the first "
                  f"{limit} characters are shown. Remove debugging prints from {title} before you use it in a loop.")


def dtype_notes(outputs: list[dict], references: list[dict]) -> list[str]:
    """Outputs in float64 where the reference is float32: right values, but twice the memory,
    and a dtype mismatch error as soon as they meet float32 weights in a matmul."""
    found: set[str] = set()

    def walk(name: str, got: Any, want: Any) -> None:
        if isinstance(want, dict) and isinstance(got, dict):
            for k in want:
                walk(name if k == "out" else f"output `{k}`", got.get(k), want[k])
        elif isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
            for g, w in zip(got, want):
                walk(name, g, w)
        elif isinstance(want, Tensor) and isinstance(got, Tensor):
            if got.dtype == torch.float64 and want.dtype == torch.float32:
                found.add(name)

    for got, want in zip(outputs, references):
        walk("output", got, want)
    return [f"your {name} is float64 where the reference is float32 (a float64 tensor, a NumPy array or "
            "torch.tensor of Python floats in your computation?). It passes, but it takes twice the memory and "
            "fails with a dtype error when it meets float32 weights." for name in sorted(found)]


def _require_forward(obj: Any) -> None:
    """A module whose class defines no ``forward`` (misspelled, or not written): say so,
    rather than torch's "missing the required forward function" or "not implemented"."""
    if not isinstance(obj, nn.Module) or type(obj).forward is not nn.Module.forward:
        return
    import difflib

    cls = type(obj)
    own = [k for klass in cls.__mro__ if klass not in (nn.Module, object) for k, v in vars(klass).items()
           if callable(v) and not k.startswith("__")]
    close_names = difflib.get_close_matches("forward", own, n=1, cutoff=0.6)
    guess = f" You defined `{close_names[0]}`: did you mean `forward`?" if close_names else ""
    raise LearnerError(f"{cls.__name__} has no `forward` method, so calling it cannot work.{guess}\n"
                       "  A torch module computes its output in a method named exactly `forward(self, ...)`.")


def _name(obj: Any) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def load_parameters(module: nn.Module, params: dict[str, Tensor], owner: str) -> None:
    own = dict(module.named_parameters())
    missing = sorted(set(params) - set(own))
    extra = sorted(set(own) - set(params))
    if missing or extra:
        lines = [f"{owner}'s parameters do not match the names the exercise expects."]
        if missing:
            lines.append(f"  missing: {', '.join(missing)}")
        if extra:
            lines.append(f"  unexpected: {', '.join(extra)}")
        lines.append("Keep the parameter names of the provided __init__ (they mirror TransformerLens).")
        raise LearnerError("\n".join(lines))
    for name, value in params.items():
        if own[name].shape != value.shape:
            raise LearnerError(
                f"{owner}.{name} has shape {tuple(own[name].shape)}, expected {tuple(value.shape)}."
            )
    with torch.no_grad():
        for name, value in params.items():
            own[name].copy_(value)


def _detach(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_detach(v) for v in x)
    return x


def run_cases(exercise: Exercise, impl: Any, guarded: bool, watch: list | None = None,
              hits: list[str] | None = None) -> list[dict]:
    outputs = []
    for case in exercise.cases:
        outputs.append(run_case(exercise, case, impl, guarded, watch, hits))
    return outputs


def trusted_outputs(exercise: Exercise, impl: Any) -> list[dict]:
    """The outputs of trusted code (the reference or a catalogued mistake) on every case,
    remembered per case: checking an exercise again (after a fix, or its hidden tests, which
    keep every visible case) does not recompute them. Cases are seeded, so a case's outputs
    are a function of the case; a case that cannot be used as a key is simply recomputed."""
    outputs = []
    for case in exercise.cases:
        try:
            key = (exercise.name, exercise.run, impl, _frozen(case))
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in _TRUSTED:
            _TRUSTED.move_to_end(key)
            outputs.append(copy.deepcopy(_TRUSTED[key]))
            continue
        out = run_case(exercise, case, impl, guarded=False)
        if key is not None:
            try:
                _TRUSTED[key] = copy.deepcopy(out)
            except Exception:  # noqa: BLE001 (an output that cannot be copied is not remembered)
                pass
            while len(_TRUSTED) > _TRUSTED_MAX:
                _TRUSTED.popitem(last=False)
        outputs.append(out)
    return outputs


_TRUSTED: "OrderedDict[tuple, dict]" = OrderedDict()
_TRUSTED_MAX = 512  # cases (each output is small: check inputs are small)


def _frozen(x: Any) -> Any:
    """A hashable stand-in for a case's value; TypeError for anything but plain data."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return (type(x).__name__, x)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_frozen(v) for v in x))
    if isinstance(x, dict):
        return ("dict", tuple(sorted((str(k), _frozen(v)) for k, v in x.items())))
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__qualname__, tuple((f.name, _frozen(getattr(x, f.name))) for f in dataclasses.fields(x)))
    raise TypeError(f"not plain data: {type(x).__name__}")


def run_case(exercise: Exercise, case: dict, impl: Any, guarded: bool, watch: list | None = None,
             hits: list[str] | None = None, notes: list[str] | None = None, executed: dict | None = None) -> dict:
    ctx = RunContext(exercise, case, guarded, watch, hits, notes, executed)
    with preserved_state():
        return _detach(exercise.run(impl, ctx))


def _reference_seconds(exercise: Exercise, case: dict) -> float:
    return _cpu_seconds(lambda: run_case(exercise, case, exercise.reference, guarded=False))


def collect(exercise: Exercise, impl: Any, reference_calls: list[str] | None = None,
            notes: list[str] | None = None, executed: dict | None = None) -> list[dict]:
    """Step 1: run the learner's ``impl`` on every case, under guards. Raises CheckFailed.

    Each case has its own time limit (``exercise.time_limit`` CPU seconds, or 20 times what the
    reference takes on this machine, whichever is larger). With a list as ``reference_calls``
    (when grading), calls from the learner's code into the exercise's reference implementation
    are appended to it, and with a dict as ``executed`` the code objects the learner's code ran
    (see ``watching``). With a list as ``notes``, one-line remarks that are not failures
    (printing a lot, reseeding) are appended to it.
    """
    notes = [] if notes is None else notes
    with print_limit(notes, exercise.title):
        return _collect(exercise, impl, reference_calls, notes, executed)


def _collect(exercise: Exercise, impl: Any, reference_calls: list[str] | None, notes: list[str],
             executed: dict | None = None) -> list[dict]:
    warm_up()
    watch = reference_code(exercise.reference) if reference_calls is not None else None
    outputs = []
    for case in exercise.cases:
        limit = exercise.time_limit
        for attempt in (1, 2):
            try:
                with time_limit(limit):
                    outputs.append(run_case(exercise, case, impl, True, watch, reference_calls, notes, executed))
                break
            except _Timeout:
                # A slow machine? Measure the reference on this case and allow 20 times that.
                slow = 20 * _reference_seconds(exercise, case)
                if attempt == 1 and slow > limit:
                    limit = slow
                    continue
                raise CheckFailed(
                    f"✗ {exercise.name}: your code computed for more than {limit:.3g} s on input "
                    f"{exercise.describe(case)} and was stopped\n"
                    f"  (the reference takes {_seconds_text(slow / 20)} there).\n"
                    "  Is there an infinite loop (a `while` whose condition never changes), or a loop over every\n"
                    "  element where a tensor operation would do?"
                ) from None
            except LearnerError as e:
                if e.not_implemented:
                    raise CheckFailed(
                        f"✗ {exercise.name}: not implemented yet.\n"
                        f"  Replace `raise NotImplementedError()` in the {exercise.title} cell with your code, run that cell,"
                        " then run this check again."
                    ) from None
                raise CheckFailed(f"✗ {exercise.name}: {e}" + _uses_note(exercise)) from None
    return outputs


def _seconds_text(seconds: float) -> str:
    return "under 0.01 s" if seconds < 0.01 else f"{seconds:.2g} s"


def _uses_note(exercise: Exercise) -> str:
    return f"\n  ({exercise.title} builds on your {exercise.uses}: make sure their checks pass.)" if exercise.uses else ""


# ---------------------------------------------------------------------------------------------
# Judging outputs
# ---------------------------------------------------------------------------------------------


def close(got: Any, want: Any, atol: float, rtol: float) -> bool:
    if isinstance(want, Tensor):
        if not isinstance(got, Tensor) or got.shape != want.shape:
            return False
        if want.is_floating_point() != got.is_floating_point():
            return False
        return bool(torch.allclose(got.double(), want.double(), atol=atol, rtol=rtol, equal_nan=True))
    if isinstance(want, float):
        return isinstance(got, (int, float)) and math.isclose(got, want, abs_tol=atol, rel_tol=rtol)
    if isinstance(want, dict):
        return isinstance(got, dict) and want.keys() == got.keys() and all(close(got[k], want[k], atol, rtol) for k in want)
    return got == want


def describe_difference(name: str, got: Any, want: Any, atol: float, rtol: float) -> str | None:
    """A sentence on how ``got`` differs from ``want``, or None if they agree."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{name} should be a dict, got {type(got).__name__}"
        for k in want:
            # the exercise's own output names, not the internal key: "your output", "your output `loss`"
            sub = (name if k == "out" else f"{name} `{k}`") if name == "your output" else f"{name}[{k!r}]"
            msg = describe_difference(sub, got.get(k), want[k], atol, rtol)
            if msg:
                return msg
        return None
    if isinstance(want, float):
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            return f"{name} should be a number (a Python float), got {type(got).__name__}"
        if math.isnan(got):
            return f"{name} is NaN (expected {want:.6g})"
        if math.isclose(got, want, abs_tol=atol, rel_tol=rtol):
            return None
        return f"{name} is {got:.6g}, expected {want:.6g} (off by {abs(got - want):.3g})"
    if not isinstance(want, Tensor):
        return None if got == want else f"{name} is {got!r}, expected {want!r}"
    if not isinstance(got, Tensor):
        return f"{name} should be a torch.Tensor, got {type(got).__name__}"
    if got.shape != want.shape:
        msg = f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        order = _axis_order(got, want, atol, rtol) if sorted(got.shape) == sorted(want.shape) else None
        if order is not None:
            msg += (f" and holds the expected values with the axes in another order: your output equals "
                    f"expected.permute{order} (an einops pattern or a transpose with its axes in the wrong order?)")
        elif got.numel() == want.numel() and sorted(got.shape) == sorted(want.shape):
            msg += " (same sizes in another order: are two axes swapped?)"
        elif got.ndim == want.ndim - 1 or got.ndim == want.ndim + 1:
            msg += " (one axis too many or too few: a sum/mean over the wrong axis, or a missing keepdim=True?)"
        return msg
    if want.is_floating_point() and not got.is_floating_point():
        return f"{name} has dtype {got.dtype}, expected a floating-point tensor ({want.dtype})"
    if not want.is_floating_point() and got.is_floating_point():
        return f"{name} has dtype {got.dtype}, expected integer token ids ({want.dtype})"
    if got.is_floating_point():
        bad = ~torch.isfinite(got) & torch.isfinite(want)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            kind = "NaN" if torch.isnan(got[idx]) else "inf"
            return (
                f"{name} contains {int(bad.sum())} non-finite value(s) (first: {kind} at index {list(idx)}) "
                "where the reference is finite: a division by zero, log(0), or exp of a large number?"
            )
        diff = (got.double() - want.double()).abs()
        diff = torch.where(torch.isnan(diff), torch.zeros_like(diff), diff)
        tol = atol + rtol * want.double().abs()
        wrong = diff > tol
        if not wrong.any():
            return None
        idx = _argmax_index(diff - tol)
        return (
            f"{name} differs from the reference in {int(wrong.sum())} of {want.numel()} entries; "
            f"largest difference {float(diff[idx]):.4g} at index {list(idx)} "
            f"(yours {float(got[idx]):.6g}, expected {float(want[idx]):.6g})"
        )
    wrong = got != want
    if not wrong.any():
        return None
    idx = _argmax_index(wrong.int())
    return (
        f"{name} differs in {int(wrong.sum())} of {want.numel()} entries; first at index {list(idx)} "
        f"(yours {got[idx].item()}, expected {want[idx].item()})"
    )


def _axis_order(got: Tensor, want: Tensor, atol: float, rtol: float) -> tuple[int, ...] | None:
    """The permutation of ``want``'s axes that gives ``got``, if there is one (up to 5 axes)."""
    import itertools

    if want.ndim > 5 or not got.is_floating_point() == want.is_floating_point():
        return None
    for order in itertools.permutations(range(want.ndim)):
        if order != tuple(range(want.ndim)) and tuple(want.shape[i] for i in order) == tuple(got.shape):
            if close(got, want.permute(order), atol, rtol):
                return order
    return None


# ---------------------------------------------------------------------------------------------
# Diagnosers: when no catalogued mistake matches, say what kind of difference it is
# ---------------------------------------------------------------------------------------------


def diagnose(got: Any, want: Any, atol: float, rtol: float) -> str | None:
    """One sentence on the *kind* of difference between ``got`` and ``want`` (same structure),
    when it has a recognisable form: scaled, opposite sign, shifted by a constant or along an
    axis, two axes transposed, the right values in another order, right only on part of the
    output (a triangle, some positions), masked entries not -inf, all zeros, or a near miss.
    None when no form fits: then the verdict gives only the difference itself."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return None
        for k in want:
            if k in got and not close(got[k], want[k], atol, rtol):
                found = diagnose(got[k], want[k], atol, rtol)
                return None if found is None else (found if k == "out" else f"(`{k}`) {found}")
        return None
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, (int, float)) and math.isfinite(got) and want != 0 and got != 0:
            return _ratio_story(got / want, "your number", clean_only=True)
        return None
    if not (isinstance(want, Tensor) and isinstance(got, Tensor)) or got.shape != want.shape:
        return None
    if want.numel() == 0:
        return None
    if not want.is_floating_point() and not got.is_floating_point() and not want.dtype == torch.bool:
        delta = got.long() - want.long()
        if want.numel() >= 3 and bool((delta == delta.flatten()[0]).all()) and int(delta.flatten()[0]) != 0:
            k = int(delta.flatten()[0])
            return (f"every entry of yours is the expected one {'+' if k > 0 else '-'} {abs(k)}: an offset or an off-by-one "
                    "in an index, a code or a count?")
        return None
    if not (want.is_floating_point() and got.is_floating_point()):
        return None
    try:
        return _diagnose_tensor(got.double(), want.double(), atol, rtol)
    except Exception:  # a diagnoser must never turn a verdict into a crash
        return None


def diagnose_cases(pairs: list[tuple[Any, Any]], atol: float, rtol: float) -> str | None:
    """The diagnosis of the first failing (got, want) pair, if every failing pair has a story
    of the same kind (numbers aside): a pattern seen in one case only may be a coincidence."""
    import re

    stories = [diagnose(g, w, atol, rtol) for g, w in pairs if not close(g, w, atol, rtol)]
    if not stories or any(story is None for story in stories):
        return None
    kinds = {re.sub(r"[-+]?\d[\d.e+-]*%?", "#", story) for story in stories}
    return stories[0] if len(kinds) == 1 else None


def _ratio_story(ratio: float, what: str, clean_only: bool = False) -> str | None:
    """A scale factor's story. ``clean_only``: only a sign, an integer or a square-root ratio
    (any two single numbers have *some* ratio, which says nothing)."""
    if abs(ratio - 1) < 1e-3:
        return None
    if abs(ratio + 1) < 1e-3:
        return f"{what} is the expected one with the opposite sign: a subtraction the wrong way round, or a missing minus?"
    size = abs(ratio) if abs(ratio) >= 1 else 1 / abs(ratio)
    sign = "minus " if ratio < 0 else ""
    words = "times" if abs(ratio) >= 1 else "divided by"
    n = round(size)
    if n >= 2 and abs(size - n) < 1e-3 * size:
        return (f"{what} is exactly {sign}{words} {n} the expected one: a sum where a mean belongs (or the other way "
                f"round), or a size such as {n} multiplied or divided once too often?")
    n2 = round(size * size)
    if n2 >= 2 and abs(size * size - n2) < 2e-3 * n2:
        return (f"{what} is exactly {sign}{words} sqrt({n2}) the expected one: a 1/sqrt(d) scale missing, applied "
                "twice, or with the wrong d?")
    if clean_only:
        return None
    return f"{what} is the expected one times {ratio:.4g} everywhere: a missing or extra scale factor?"


def _diagnose_tensor(got: Tensor, want: Tensor, atol: float, rtol: float) -> str | None:
    def same(a: Tensor, b: Tensor) -> bool:
        return bool(torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))

    if same(got, want):
        return None
    # masked entries: -inf in the reference, something finite in yours (or the other way round)
    neg = torch.isneginf(want)
    if neg.any() and not torch.isneginf(got[neg]).all():
        finite = got[neg & torch.isfinite(got)]
        value = f" (yours holds values such as {float(finite[0]):.3g})" if finite.numel() else ""
        rest_ok = same(got[~neg], want[~neg])
        return (f"the reference is -inf at {int(neg.sum())} masked entries where yours is not{value}"
                + ("; everything else matches" if rest_ok else "")
                + ": fill masked scores with float('-inf'), so that softmax gives them exactly 0.")
    if torch.isneginf(got).any() and not neg.any():
        return "yours has -inf entries where the reference has none: a mask applied where it does not belong (or to the wrong positions)?"
    if not (torch.isfinite(got).all() and torch.isfinite(want).all()):
        return None
    if not got.any() and want.any():
        return ("your output is all zeros: did you read entries that are always 0 (above the diagonal of a causal "
                "pattern, masked positions), or create a tensor with torch.zeros and never fill it in?")
    # a scale factor or the opposite sign
    scale = _scale_factor(got, want)
    if scale is not None:
        return _ratio_story(scale, "your output", clean_only=want.numel() < 4)
    if want.numel() < 4:  # too few numbers for a pattern to mean anything
        return None
    # a constant offset
    offset = float((got - want).mean())
    if abs(offset) > atol and same(got - offset, want):
        return f"your output is the expected one plus {offset:.4g} everywhere: a constant added or subtracted (a bias or mean)?"
    # two axes of equal size swapped
    for a in range(want.ndim):
        for b in range(a + 1, want.ndim):
            if want.shape[a] == want.shape[b] and want.shape[a] > 1 and same(got, want.transpose(a, b)):
                return (f"your output is the expected one with axes {a} and {b} swapped (they have the same size, so the "
                        "shape looks right): a transpose, .T, or einops pattern with those two axes the wrong way round?")
    # shifted along one axis
    for axis in range(want.ndim):
        n = want.shape[axis]
        for k in (1, -1, 2, -2):
            if n <= abs(k) + 1:
                continue
            g = got.narrow(axis, k, n - k) if k > 0 else got.narrow(axis, 0, n + k)
            w = want.narrow(axis, 0, n - k) if k > 0 else want.narrow(axis, -k, n + k)
            if same(g, w) and not same(got, want):
                later = "later" if k > 0 else "earlier"
                return (f"your output is the expected one shifted by {abs(k)} along axis {axis}: entry i of yours is "
                        f"entry i {'-' if k > 0 else '+'} {abs(k)} of the expected (an off-by-one, {later} than it should be, in an index, slice or shift?)")
    # the same value everywhere, or along one axis, where the reference varies
    flat = got.flatten()
    if same(got, flat[:1].expand_as(flat).reshape(got.shape)) and not same(want, want.flatten()[:1].expand_as(want.flatten()).reshape(want.shape)):
        return (f"every entry of your output is the same value ({float(flat[0]):.4g}), where the expected ones differ: what "
                "should make them differ has no effect in your code (an input ignored, a patch or hook that changes "
                "nothing, one value computed and repeated?)")
    for axis in range(want.ndim):
        if want.shape[axis] < 2:
            continue
        first_g, first_w = got.narrow(axis, 0, 1), want.narrow(axis, 0, 1)
        if same(got, first_g.expand_as(got)) and not same(want, first_w.expand_as(want)):
            right = " It is right for index 0 there." if same(first_g, first_w) else ""
            return (f"your output does not change along axis {axis}, where the expected one does: what differs along that "
                    f"axis is ignored (an input not used, the first item computed and repeated, or a loop variable that "
                    f"is never used?){right}")
    # the right values in another order along one axis
    for axis in range(want.ndim):
        if want.shape[axis] > 1 and same(got.sort(dim=axis).values, want.sort(dim=axis).values):
            return (f"your output has the expected values, but in another order along axis {axis}: the wrong index order, "
                    "a sort, or a gather/indexing with the wrong ids?")
    # right only on part of the output
    wrong = ~torch.isclose(got, want, atol=atol, rtol=rtol)
    if want.ndim >= 2 and want.shape[-1] == want.shape[-2] and want.shape[-1] > 2:
        n = want.shape[-1]
        upper = torch.ones(n, n, dtype=torch.bool).triu(1)
        if not wrong[..., ~upper].any() and wrong[..., upper].any():
            return ("your output is right on and below the diagonal and wrong only above it: the part a causal mask "
                    "removes (is the mask missing, or applied to the wrong entries?)")
        if not wrong[..., upper].any() and wrong[..., ~upper].any():
            return ("your output agrees above the diagonal (where a causal mask acts) and differs on and below it: the "
                    "masked part is right, the part that is kept is not (return the scores themselves with the mask applied, "
                    "not the mask or changed scores)")
    for axis in range(want.ndim):
        n = want.shape[axis]
        if n < 3:
            continue
        per_index = wrong.transpose(0, axis).reshape(n, -1).any(dim=1)
        bad = [int(i) for i in per_index.nonzero().flatten()]
        if 0 < len(bad) <= n // 3 and set(bad) <= {0, 1, n - 2, n - 1}:
            where = ", ".join(map(str, bad[:4])) + (", ..." if len(bad) > 4 else "")
            return (f"your output is right everywhere except at index {where} of axis {axis} ({len(bad)} of {n}): "
                    "a special case at the start or end (first/last position, a boundary in a slice or mask)?")
    # a near miss: the method is right, a detail of the formula is not
    rel = float((got - want).norm() / want.norm().clamp_min(1e-12))
    if rel < 0.02:
        return (f"your output is within {rel:.2%} of the expected one everywhere: the method is right, a detail of the "
                "formula differs (for example the exact erf GELU instead of GPT-2's tanh approximation, "
                "where eps goes, or the unbiased variance)")
    return None


def _argmax_index(t: Tensor) -> tuple[int, ...]:
    flat = int(t.flatten().argmax())
    idx = []
    for size in reversed(t.shape):
        idx.append(flat % size)
        flat //= size
    return tuple(reversed(idx))


def _scale_factor(got: Tensor, want: Tensor) -> float | None:
    g, w = got.double().flatten(), want.double().flatten()
    ww = float(w @ w)
    if ww == 0 or not torch.isfinite(g).all():
        return None
    s = float(g @ w) / ww
    if abs(s - 1) < 1e-3 or abs(s) < 1e-6:
        return None
    resid = float((g - s * w).norm()) / math.sqrt(ww)
    return s if resid < 1e-3 else None


def judge_close(exercise: Exercise, outputs: list[dict], references: list[dict], mistakes: dict[str, list[dict]]) -> None:
    """Default judge: every output equals the reference's within tolerance."""
    failing = [j for j, (got, want) in enumerate(zip(outputs, references))
               if describe_difference("your output", got, want, exercise.atol, exercise.rtol) is not None]
    for i, (case, got, want) in enumerate(zip(exercise.cases, outputs, references)):
        problem = describe_difference("your output", got, want, exercise.atol, exercise.rtol)
        if problem is None:
            continue
        hint = consistent_mistake(exercise, outputs, references, mistakes, failing)
        diagnosis = None
        if hint is None:
            pairs = list(zip(outputs, references))
            pairs.insert(0, pairs.pop(i))  # this case's story first
            diagnosis = diagnose_cases(pairs, exercise.atol, exercise.rtol)
        fail(exercise, case, problem, hint, diagnosis=diagnosis)


def consistent_mistake(exercise: Exercise, outputs: list, references: list, mistakes: dict[str, list[dict]],
                       failing: list[int]) -> Mistake | None:
    """The first catalogued mistake that explains *every* failing case (``failing``: their
    indices). One case alone (a single number, say) can match a mistake by coincidence, and
    then the hint would tell the wrong story."""
    for m in exercise.mistakes:
        one = replace(exercise, mistakes=[m])
        if failing and all(_matching_mistake(one, outputs[j], references[j], mistakes, j) for j in failing):
            return m
    return None


def _matching_mistake(exercise, got, want, mistakes, case_index) -> Mistake | None:
    for m in exercise.mistakes:
        if m.detect is not None:
            try:
                if m.detect(got, want):
                    return m
            except Exception:
                continue
        elif m.name in mistakes and close(got, mistakes[m.name][case_index], exercise.atol, exercise.rtol):
            return m
    return None


def fail(exercise: Exercise, case: dict, problem: str, hint: Mistake | None, diagnosis: str | None = None) -> None:
    end = "" if problem.rstrip().endswith((".", "?", "!")) else "."
    lines = [f"✗ {exercise.name}: {problem}{end}", f"  input: {exercise.describe(case)}"]
    if hint is not None:
        lines.append(f"  likely mistake ({hint.name}): {hint.hint}")
    elif diagnosis:
        lines.append(f"  diagnosis: {diagnosis}")
    if hint is None and exercise.uses:
        lines.append(f"  ({exercise.title} builds on your {exercise.uses}: make sure their checks pass.)")
    if exercise.stuck:
        lines.append(f"  stuck? {exercise.stuck}")
    raise CheckFailed("\n".join(lines))


class _MistakeOutputs(Mapping):
    """The catalogued mistakes' outputs on the exercise's cases, by mistake name, computed the
    first time a judge asks for one. A correct answer never asks, so it costs one run of the
    reference instead of one run of the reference and one of every mistake. A mistake that
    crashes on these inputs is absent (it cannot be matched by output)."""

    def __init__(self, exercise: Exercise):
        self._exercise = exercise
        self._impls = {m.name: m.impl for m in exercise.mistakes if m.impl is not None}
        self._outputs: dict[str, list[dict] | None] = {}

    def _get(self, name: str) -> list[dict] | None:
        if name not in self._outputs:
            try:
                self._outputs[name] = trusted_outputs(self._exercise, self._impls[name])
            except Exception:  # noqa: BLE001
                self._outputs[name] = None
        return self._outputs[name]

    def __getitem__(self, name: str) -> list[dict]:
        if name not in self._impls or self._get(name) is None:
            raise KeyError(name)
        return self._outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._impls and self._get(name) is not None

    def __iter__(self):
        return (name for name in self._impls if self._get(name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def judge(exercise: Exercise, outputs: list[dict]) -> list[str]:
    """Step 2: compare outputs with the reference (and the known mistakes). Raises CheckFailed;
    on success returns one-line notes (float64 outputs).

    Runs only trusted code (the reference and the catalogued mistakes), never the learner's.
    """
    references = trusted_outputs(exercise, exercise.reference)
    mistakes = _MistakeOutputs(exercise)
    try:
        (exercise.judge or judge_close)(exercise, outputs, references, mistakes)
    except CheckFailed:
        raise
    except Exception as e:  # outputs of a type or structure the judge cannot compare
        raise CheckFailed(
            f"✗ {exercise.name}: your output could not be compared with the reference "
            f"({type(e).__name__}: {e}).\n  Check what your {exercise.title} returns: its type, shape and dtype."
        ) from None
    return dtype_notes(outputs, references)

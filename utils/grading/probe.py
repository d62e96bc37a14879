"""What the grader asks the kernel after every cell: has anything the grade relies on been changed?

``changes()`` compares, by identity, the objects that decide what a check records with their
state when the kernel started (its first call): the functions of torch and einops that a
learner's answer computes with, the course's checking code (``utils.checks``, ``utils.grading``,
the exercise definitions), the modules registered under those names in ``sys.modules``,
builtins and ``sys``'s functions, and IPython's display channel that carries records out of the
kernel. It returns the names of those that now differ, e.g. ``["torch.allclose"]``.

``model.eval()``, ``re.compile(...)``, ``os.environ[...] = ...`` or ``torch.backends...`` flags
change none of them, so honest code is never flagged; ``torch.allclose = lambda *a: True`` or
``sys.modules["utils.checks"].check = ...`` is, whatever syntax wrote it, in the cell that did
it. (The grader runs it in the kernel, which runs the learner's code: a determined attacker can
subvert it too; see the README on what still needs a human.)
"""

from __future__ import annotations

import builtins
import sys
from typing import Any

_GUARDED_PREFIXES = ("utils.checks", "utils.grading", "_course_exercises")
_BASELINE: dict[str, int] | None = None


def _public(namespace: dict) -> dict[str, Any]:
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def _snapshot() -> dict[str, int]:
    import einops
    import torch
    import torch.nn.functional as F

    state: dict[str, int] = {}

    def add(prefix: str, namespace: dict) -> None:
        for key, value in list(namespace.items()):
            if isinstance(value, type(sys)) or not callable(value):  # modules: reached separately
                continue
            state[f"{prefix}.{key}"] = id(value)
            code = getattr(value, "__code__", None)
            if code is not None:
                state[f"{prefix}.{key}.__code__"] = id(code)

    # What answers compute with.
    for name, module in (("torch", torch), ("torch.nn.functional", F), ("torch.testing", torch.testing),
                         ("torch.linalg", torch.linalg), ("torch.special", torch.special), ("einops", einops)):
        add(name, _public(vars(module)))
    for name, klass in (("torch.Tensor", torch.Tensor), ("torch.TensorBase", torch._C.TensorBase),
                        ("torch.nn.Module", torch.nn.Module), ("torch.nn.Linear", torch.nn.Linear)):
        add(name, dict(vars(klass)))
    add("builtins", _public(vars(builtins)))  # not ``_`` (the last result, in some shells)
    add("sys", {k: v for k, v in vars(sys).items() if k in ("setprofile", "getprofile", "settrace", "gettrace",
                                                              "_getframe", "exit")})
    # The course's checking code, wherever a learner could reach it.
    for name, module in list(sys.modules.items()):
        if name.startswith(_GUARDED_PREFIXES) and module is not None:
            state[f"sys.modules[{name!r}]"] = id(module)
            if name == __name__:
                continue
            add(name, dict(vars(module)))
            for key, value in list(vars(module).items()):
                if isinstance(value, type) and getattr(value, "__module__", None) == name:
                    add(f"{name}.{key}", dict(vars(value)))
    # The exercises themselves (what a check runs, and on what).
    registry = getattr(sys.modules.get("utils.checks"), "_REGISTRY", None) or {}
    state["utils.checks._REGISTRY"] = id(registry)
    for name, ex in registry.items():
        for field in ("run", "reference", "judge", "cases", "hidden_cases"):
            state[f"exercise {name!r}.{field}"] = id(getattr(ex, field, None))
    # The channel records leave the kernel by.
    try:
        import IPython.core.display_functions as display_functions
        import IPython.display
        from IPython import get_ipython

        state["IPython.display.publish_display_data"] = id(IPython.display.publish_display_data)
        state["IPython.core.display_functions.publish_display_data"] = id(display_functions.publish_display_data)
        shell = get_ipython()
        if shell is not None:
            pub = shell.display_pub
            state["shell.display_pub"] = id(pub)
            state["shell.display_pub.publish (instance)"] = id(vars(pub).get("publish"))
            state["type(shell.display_pub).publish"] = id(type(pub).publish)
            session = getattr(getattr(shell, "kernel", None), "session", None)
            if session is not None:
                state["kernel.session"] = id(session)
                state["kernel.session.send (instance)"] = id(vars(session).get("send"))
                state["type(kernel.session).send"] = id(type(session).send)
    except Exception:  # noqa: BLE001 (not in IPython: nothing to guard there)
        pass
    return state


def changes() -> list[str]:
    """Names of the guarded objects that differ from the kernel's first call (which records them)."""
    global _BASELINE
    # Importing the checker registers its modules; the baseline must include them.
    import utils.checks
    import utils.checks.core  # noqa: F401
    import utils.grading.copies  # noqa: F401
    import utils.grading.record  # noqa: F401

    utils.checks._load_registry()
    if _BASELINE is None:
        # What torch rebinds by itself the first time it trains (importing torch._dynamo wraps
        # torch.manual_seed, for one) happens now, before the baseline, not during a check.
        utils.checks.core.warm_up()
    now = _snapshot()
    if _BASELINE is None:
        _BASELINE = now
        return []
    return sorted(key for key, value in _BASELINE.items() if now.get(key) != value)


def changes_json() -> str:
    """``changes()`` as a JSON string (what the grader's request evaluates)."""
    import json

    return json.dumps(changes())


# What the grader evaluates in the kernel after each cell (a user expression).
EXPRESSION = "__import__('utils.grading.probe', fromlist=['changes_json']).changes_json()"

"""Find a submission's uses of the toolkit's reference implementations, by reading its code.

The toolkit ships the reference solution of every exercise (``utils.transformer.LayerNorm`` is
chapter 1's LayerNorm). Reading the notebook's source outside the kernel catches imports and
attribute paths to a reference (``from utils.transformer import LayerNorm``, ``import
utils.transformer as t; t.LayerNorm``, ``getattr(t, "LayerNorm")``, ``importlib``); the kernel
also notes calls into a reference's code while the learner's code runs (see
``utils.checks.core.watching``). Together they catch using the reference, short of deliberate
obfuscation, which a human reading the notebook would see.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass

from utils.checks import exercises


def reference_paths() -> dict[str, list[str]]:
    """Dotted path of each exercise's reference (``utils.transformer.LayerNorm``) -> exercises."""
    found: dict[str, list[str]] = defaultdict(list)
    for ex in exercises():
        ref = ex.reference
        module, qualname = getattr(ref, "__module__", None), getattr(ref, "__qualname__", None)
        if module and qualname and module.startswith("utils."):
            found[f"{module}.{qualname}"].append(ex.name)
    return dict(found)


@dataclass(frozen=True)
class Use:
    path: str  # the reference's dotted path
    line: int  # in the cell


def _to_python(source: str) -> str:
    try:  # IPython syntax (%magics, !shell) -> plain Python
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:
        return source


def uses_in_source(source: str, references: dict[str, list[str]]) -> list[Use]:
    try:
        tree = ast.parse(_to_python(source))
    except SyntaxError:
        return []
    modules = {path.rsplit(".", 1)[0] for path in references}
    aliases: dict[str, str] = {}  # local name -> dotted path it stands for
    uses: list[Use] = []

    def note(path: str, node: ast.AST) -> None:
        for ref in references:
            if path == ref or path.startswith(ref + "."):
                uses.append(Use(ref, getattr(node, "lineno", 0)))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                if a.name == "*":
                    for ref in references:
                        if ref.rsplit(".", 1)[0] == node.module:
                            uses.append(Use(ref, node.lineno))
                else:
                    path = f"{node.module}.{a.name}"
                    aliases[a.asname or a.name] = path
                    note(path, node)

    # t = importlib.import_module("utils.transformer") (or __import__): t stands for the module
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            fn = node.value.func
            fname = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", "")
            args = node.value.args
            if fname in ("import_module", "__import__") and args and isinstance(args[0], ast.Constant) \
                    and args[0].value in modules:
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        aliases[target.id] = args[0].value

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            path = dotted(node)
            if path:
                note(path, node)
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            # getattr(module, "Name")
            if name == "getattr" and len(node.args) >= 2 and strings:
                base = dotted(node.args[0])
                if base:
                    note(f"{base}.{strings[0]}", node)
    return sorted(set(uses), key=lambda u: (u.line, u.path))


def learner_cells(nb) -> list[tuple[int, str]]:
    """(index, source) of every code cell the learner could write in: answer cells and cells
    they added, not the course's locked cells (their source is restored before grading)."""
    cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("locked") or (meta.get("grade") and not meta.get("solution")):
            continue
        cells.append((i, cell.source))
    return cells


def reference_uses(nb, provided: set[str] = frozenset()) -> dict[str, list[tuple[int, Use]]]:
    """Exercise name -> where the notebook uses that exercise's reference. Cells whose source is
    exactly one of the course's own cells (``provided``) are not the learner's code."""
    references = reference_paths()
    found: dict[str, list[tuple[int, Use]]] = defaultdict(list)
    for index, source in learner_cells(nb):
        if source.strip() in provided:
            continue
        for use in uses_in_source(source, references):
            for name in references[use.path]:
                found[name].append((index, use))
    return dict(found)


# ---------------------------------------------------------------------------------------------
# Where a change happened, and what deserves a human look
# ---------------------------------------------------------------------------------------------
#
# Whether a notebook changed the checker or torch is decided while it runs (``probe``), by
# what actually changed, never by names in its source: ``model.eval()``, ``re.compile``,
# ``os.environ[...]`` and a variable called ``record`` change nothing. Reading the source only
# says *where* a change that did happen was made, and lists constructs a reviewer may want to
# look at; neither costs a point by itself.


@dataclass(frozen=True)
class Finding:
    line: int
    what: str


def _parse(source: str) -> ast.AST | None:
    try:
        return ast.parse(_to_python(source))
    except SyntaxError:
        return None


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Subscript):
        key = node.slice.value if isinstance(node.slice, ast.Constant) else "..."
        return f"{_dotted(node.value)}[{key!r}]"
    if isinstance(node, ast.Call):
        return f"{_dotted(node.func)}(...)"
    return "..."


def locate(source: str, changed: list[str]) -> list[Finding]:
    """Lines of ``source`` that may have made the ``changed`` objects differ (``probe`` names
    such as ``torch.allclose`` or ``utils.checks.check.__code__``): assignments, deletions and
    ``setattr`` calls whose target ends with one of their names. Empty when none is visible
    (the change then came from code that does not name it)."""
    tree = _parse(source)
    if tree is None:
        return []
    names = set()
    for key in changed:
        parts = [p for p in key.replace("[", ".").replace("]", "").replace("'", "").split(".") if p]
        parts = [p for p in parts if p not in ("__code__",) and " " not in p]
        if parts:
            names.add(parts[-1])
    found = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] in ("setattr", "delattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in names:
            found.append(Finding(node.lineno, f"{_dotted(node.func)}({_dotted(node.args[0])}, {node.args[1].value!r}, ...)"))
        while targets:
            t = targets.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                targets.extend(t.elts)
            elif isinstance(t, ast.Starred):
                targets.append(t.value)
            elif isinstance(t, (ast.Attribute, ast.Subscript)):
                last = t.attr if isinstance(t, ast.Attribute) else (
                    t.slice.value if isinstance(t.slice, ast.Constant) else None)
                if last in names or (isinstance(last, str) and last.rsplit(".", 1)[-1] in names):
                    found.append(Finding(node.lineno, f"changes {_dotted(t)}"))
                elif isinstance(t, ast.Attribute) and t.attr == "__code__":
                    found.append(Finding(node.lineno, f"changes {_dotted(t)}"))
    return sorted(set(found), key=lambda f: f.line)


INTROSPECTION = {
    "sys._getframe": "reads the caller's frame",
    "sys._current_frames": "reads every thread's frames",
    "inspect.getouterframes": "reads the call stack",
    "inspect.trace": "reads the call stack",
    "threading.settrace": "traces code it did not write",
    "threading.setprofile": "traces code it did not write",
    "inspect.currentframe": "reads the caller's frame",
    "inspect.stack": "reads the call stack",
    "gc.get_objects": "walks every object in memory",
    "gc.get_referrers": "walks the references to an object",
    "sys.settrace": "traces code it did not write",
    "sys.setprofile": "traces code it did not write",
    "types.FunctionType": "builds a function from a code object",
    "types.CodeType": "builds a code object",
}
REVIEW_ATTRIBUTES = {"f_back": "reads the caller's frame", "f_locals": "reads another frame's variables",
                     "f_globals": "reads another frame's globals", "__code__": "handles code objects",
                     "__globals__": "reads a function's globals"}


def review_in_source(source: str) -> list[Finding]:
    """Constructs that can reach the grading machinery without naming it, listed for a human
    reviewer (no cost): frame and memory introspection, code objects, ``exec``/``eval`` of text,
    ``sys.modules`` lookups, importing the grading code, reading the grading settings."""
    tree = _parse(source)
    if tree is None:
        return []
    aliases: dict[str, str] = {}
    found: list[Finding] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.startswith(("utils.grading", "utils.checks.", "_course_exercises", "ctypes")):
                    found.append(Finding(node.lineno, f"imports {a.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.startswith(("utils.grading", "utils.checks.", "_course_exercises", "ctypes")):
                found.append(Finding(node.lineno, f"imports from {node.module}"))

    def full(node: ast.AST) -> str:
        text = _dotted(node)
        head, _, rest = text.partition(".")
        return f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = full(node.func)
            if name in INTROSPECTION:
                found.append(Finding(node.lineno, f"{INTROSPECTION[name]} ({name})"))
            elif name in ("exec", "eval", "compile", "builtins.exec", "builtins.eval") and node.args \
                    and not isinstance(node.args[0], ast.Constant):
                found.append(Finding(node.lineno, f"runs code built at run time ({name})"))
        elif isinstance(node, ast.Attribute) and node.attr in REVIEW_ATTRIBUTES and isinstance(node.ctx, ast.Load):
            found.append(Finding(node.lineno, f"{REVIEW_ATTRIBUTES[node.attr]} (.{node.attr})"))
        elif isinstance(node, ast.Attribute) and full(node) == "sys.modules":
            found.append(Finding(node.lineno, "looks modules up in sys.modules"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "COURSE_GRADING" in node.value:
            found.append(Finding(node.lineno, "reads the grading settings"))
    return sorted(set(found), key=lambda f: f.line)

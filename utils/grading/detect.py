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
# Tampering: code that changes or bypasses the checking machinery
# ---------------------------------------------------------------------------------------------

GUARDED_MODULES = ("utils.checks", "utils.grading", "_course_exercises", "torch", "builtins", "sys", "os.environ")
CHECKER_NAMES = {"check", "collect", "judge", "run_cases", "get_exercise", "exercises", "record", "hidden_suite",
                 "watching", "reference_code", "RunContext", "Exercise"}
DYNAMIC = {"exec", "eval", "compile", "__import__", "import_module", "setprofile", "settrace", "globals",
           "setattr", "delattr"}
ALLOWED_FROM_CHECKS = {"check", "CheckFailed"}


@dataclass(frozen=True)
class Tamper:
    line: int
    what: str


def tampering_in_source(source: str) -> list[Tamper]:
    """Ways a cell's code reaches into the checker or torch, or runs code nobody can read."""
    try:
        tree = ast.parse(_to_python(source))
    except SyntaxError:
        return []
    aliases: dict[str, str] = {}
    found: list[Tamper] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.startswith(("utils.checks", "utils.grading", "_course_exercises")):
                    found.append(Tamper(node.lineno, f"imports {a.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.startswith(("utils.grading", "_course_exercises", "utils.checks.")) or (
                    node.module == "utils.checks" and any(a.name not in ALLOWED_FROM_CHECKS for a in node.names)) or (
                    node.module == "utils" and any(a.name in ("checks", "grading") for a in node.names)):
                found.append(Tamper(node.lineno, f"imports from {node.module}"))

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Subscript):
            return dotted(node.value)
        return None

    def guarded(path: str | None) -> bool:
        return bool(path) and (path in GUARDED_MODULES or path.startswith(tuple(m + "." for m in GUARDED_MODULES))
                               or path.startswith(GUARDED_MODULES[:3]))

    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        while targets:
            t = targets.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                targets.extend(t.elts)
            elif isinstance(t, ast.Starred):
                targets.append(t.value)
            elif isinstance(t, (ast.Attribute, ast.Subscript)) and guarded(dotted(t)):
                found.append(Tamper(node.lineno, f"changes {dotted(t)}"))
            elif isinstance(t, ast.Name) and t.id in CHECKER_NAMES:
                found.append(Tamper(node.lineno, f"redefines {t.id}"))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in CHECKER_NAMES:
            found.append(Tamper(node.lineno, f"redefines {node.name}"))
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in DYNAMIC:
                found.append(Tamper(node.lineno, f"calls {name}()"))
        if isinstance(node, ast.Attribute) and node.attr in ("reference", "__code__", "__globals__", "f_globals", "f_back"):
            found.append(Tamper(node.lineno, f"uses .{node.attr}"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "COURSE_GRADING" in node.value:
            found.append(Tamper(node.lineno, "reads the grading settings"))
    return sorted(set(found), key=lambda t: t.line)


def tampering(nb) -> list[tuple[int, Tamper]]:
    return [(i, t) for i, source in learner_cells(nb) for t in tampering_in_source(source)]

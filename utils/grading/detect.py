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

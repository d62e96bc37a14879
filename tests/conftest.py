"""Shared set-up of the test process."""

from __future__ import annotations

import sys

# jsonschema (under nbformat, nbclient and nbgrader) imports rfc3987-syntax when it is installed
# (jupyter-events asks for it), and that package compiles about 40 Lark grammars at import: 3 s
# on these machines, before the first test runs, in every worker. Nothing in this suite checks
# the "iri" string formats it validates, so the test process does without it (jsonschema skips
# those formats when the import fails). Kernels, servers and other subprocesses are unaffected.
sys.modules.setdefault("rfc3987_syntax", None)

"""Attention views (circuitsvis) that render with or without internet.

circuitsvis can build every view in two ways:

* **offline** - the ~1.3 MB JavaScript bundle shipped in the circuitsvis wheel is
  inlined into the HTML. Works everywhere: Binder, Colab, a classroom with no
  internet, a notebook opened years later. Cost: every view adds ~1.3 MB to the
  saved notebook.
* **online** - the HTML loads the bundle from the unpkg CDN. Views are a few kB,
  but render only where the browser can reach unpkg.com.

When shown in Jupyter, circuitsvis itself chooses by probing a website *from the
kernel* (1 s timeout), which is slow, leaks a request, and guesses wrong when
the kernel and the browser see different networks. This module never probes:
it picks the HTML from a setting. **offline is the default**, because a view
that renders everywhere beats a smaller notebook. To switch::

    from utils.display import set_visuals
    set_visuals("online")          # or start Jupyter with COURSE_VISUALS=online

It also fixes a circuitsvis bug: views are rendered into ``<div id=... />``,
which HTML treats as an *unclosed* div, so on a page with several views one
view swallows everything after it. Each view is closed properly and wrapped in
its own ``<div class="course-view">`` container.

Usage in a notebook::

    display(attention_heads(tokens, pattern))        # pattern [n_heads, q, k]
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
from IPython.display import HTML

import circuitsvis.attention
import circuitsvis.tokens

MODES = ("offline", "online")
ENV_VAR = "COURSE_VISUALS"


def _check_mode(mode: str, source: str = "mode") -> str:
    if mode not in MODES:
        raise ValueError(f"{source} must be one of {MODES}, got {mode!r}")
    return mode


def visuals_from_env() -> str:
    """The mode named by the COURSE_VISUALS env var, or "offline" if unset."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    return _check_mode(value, f"${ENV_VAR}") if value else "offline"


VISUALS: str = visuals_from_env()


def set_visuals(mode: str) -> None:
    """Choose how views are built from now on: "offline" or "online"."""
    global VISUALS
    VISUALS = _check_mode(mode)


# --- HTML post-processing ---------------------------------------------------

_SELF_CLOSING_DIV = re.compile(r"<div\b([^<>]*?)\s*/>")
_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)


def _finish(rendered, mode: str | None) -> str:
    """Pick the HTML for `mode` from a circuitsvis RenderedHTML and repair it.

    Reads the `.local_src` / `.cdn_src` attributes directly: calling
    `_repr_html_()` would trigger circuitsvis's internet probe.
    """
    mode = _check_mode(VISUALS if mode is None else mode)
    raw = rendered.local_src if mode == "offline" else rendered.cdn_src
    # raw = '<div id=.. />  <script ...> JS + props </script>'
    head, tag, rest = raw.partition("<script")
    body, end, tail = rest.rpartition("</script>")
    head = _SELF_CLOSING_DIV.sub(r"<div\1></div>", head)
    # A token such as "</script>" inside the JSON props would end the script early.
    body = _SCRIPT_END.sub(r"<\\/\1", body)
    return f'<div class="course-view">{head}{tag}{body}{end}{tail}</div>'


# --- input validation -------------------------------------------------------

def _tokens(tokens) -> list[str]:
    tokens = list(tokens)
    if not tokens:
        raise ValueError("tokens must not be empty")
    bad = [t for t in tokens if not isinstance(t, str)]
    if bad:
        raise TypeError(f"tokens must be strings, got e.g. {bad[0]!r}")
    return tokens


def _array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor or array of numbers: {err}") from None


# --- views ------------------------------------------------------------------

def attention_heads_html(tokens, pattern, head_names=None, mode=None, **options) -> str:
    """HTML for an interactive view of attention patterns, one per head.

    tokens: n strings. pattern: [n_heads, n, n] (query, key), or [n, n] for a
    single head. head_names: optional n_heads labels. mode: "offline"/"online"
    (default: the module setting VISUALS). Extra keyword options (max_value,
    mask_upper_tri, ...) go to circuitsvis.attention.attention_heads.
    """
    tokens = _tokens(tokens)
    pattern = _array(pattern, "pattern")
    if pattern.ndim == 2:
        pattern = pattern[None]
    n = len(tokens)
    if pattern.ndim != 3 or pattern.shape[1:] != (n, n):
        raise ValueError(
            f"pattern must have shape [n_heads, {n}, {n}] or [{n}, {n}] for "
            f"{n} tokens (query, key), got {list(pattern.shape)}")
    if head_names is not None:
        head_names = [str(h) for h in head_names]
        if len(head_names) != pattern.shape[0]:
            raise ValueError(f"got {len(head_names)} head_names for "
                             f"{pattern.shape[0]} heads")
    rendered = circuitsvis.attention.attention_heads(
        attention=pattern, tokens=tokens, attention_head_names=head_names, **options)
    return _finish(rendered, mode)


def attention_heads(tokens, pattern, head_names=None, mode=None, **options) -> HTML:
    """Notebook version of `attention_heads_html`: display(attention_heads(...))."""
    return HTML(attention_heads_html(tokens, pattern, head_names, mode, **options))


def colored_tokens_html(tokens, values, mode=None, **options) -> str:
    """HTML showing each token coloured by its value (values: n numbers)."""
    tokens = _tokens(tokens)
    values = _array(values, "values")
    if values.shape != (len(tokens),):
        raise ValueError(f"values must have shape [{len(tokens)}] (one per token), "
                         f"got {list(values.shape)}")
    return _finish(circuitsvis.tokens.colored_tokens(tokens, values, **options), mode)


def colored_tokens(tokens, values, mode=None, **options) -> HTML:
    """Notebook version of `colored_tokens_html`."""
    return HTML(colored_tokens_html(tokens, values, mode, **options))

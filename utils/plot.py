"""Small plotly helpers used across the chapters (each returns a figure; call ``.show()``).

Importing this module also picks how ``fig.show()`` draws figures, in this one place
(every chapter imports it in its first cell):

* **Colab** (``google.colab`` imported): plotly's ``"colab"`` renderer.
* **any other Jupyter kernel** (JupyterLab, Notebook, VS Code, nbclient/nbconvert):
  ``"plotly_mimetype+notebook"``. Each figure goes out twice: as plotly's JSON mime type,
  which JupyterLab and VS Code draw with their plotly extension, and as HTML. The
  ``notebook`` part embeds plotly.js itself (about 5 MB, once per kernel, at the first
  ``show()``) in the output, so a notebook exported with nbconvert (which only renders the
  HTML) or opened later draws its figures without internet. plotly's own default in a
  kernel is ``"plotly_mimetype"`` alone: exported HTML would show no figures.
* **not in a kernel** (a script, pytest): plotly's own default, untouched.

plotly's ``PLOTLY_RENDERER`` environment variable, when set, always wins; e.g.
``PLOTLY_RENDERER=plotly_mimetype+notebook_connected`` loads plotly.js from its CDN
instead, for smaller saved notebooks that draw only online.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import plotly.graph_objects as go
import plotly.io as pio

JUPYTER_RENDERER = "plotly_mimetype+notebook"
COLAB_RENDERER = "colab"


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (not in a terminal IPython or a plain script)."""
    ipython = sys.modules.get("IPython")  # never import IPython just to ask
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def choose_renderer(environ=None, modules=None, in_kernel=None) -> str | None:
    """The renderer this environment should use, or None to keep plotly's choice."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if environ.get("PLOTLY_RENDERER"):
        return None  # an explicit choice; plotly has already applied it
    if "google.colab" in modules:
        return COLAB_RENDERER
    if _in_kernel() if in_kernel is None else in_kernel:
        return JUPYTER_RENDERER
    return None


def configure_renderer() -> str:
    """Set ``plotly.io.renderers.default`` for this environment; returns the default in use."""
    choice = choose_renderer()
    if choice is not None and pio.renderers.default != choice:
        pio.renderers.default = choice
    return pio.renderers.default


configure_renderer()


def loss_curve(log, baselines: dict[str, float] | None = None, title: str = "Training loss", smooth: int = 20) -> go.Figure:
    """Raw and smoothed loss of a ``utils.training.TrainingLog``, with dashed reference lines."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=log.steps, y=log.losses, name="loss", line=dict(color="rgba(99,110,250,0.3)")))
    fig.add_trace(go.Scatter(x=log.steps, y=log.smoothed(smooth), name=f"mean of last {smooth}", line=dict(color="rgb(99,110,250)")))
    for i, (label, value) in enumerate((baselines or {}).items()):
        fig.add_hline(y=value, line_dash="dash", line_color="gray", annotation_text=label,
                      annotation_position="top right" if i % 2 == 0 else "bottom right")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="cross-entropy (nats per token)",
                      template="plotly_white", height=380, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def unique_labels(labels: Sequence) -> list[str]:
    """The labels as strings, each repeat made distinct by zero-width spaces. Plotly merges equal
    category labels into one row or column ("the" at positions 3 and 9 would share a column,
    and a heat map of 15 positions would draw 14); the spaces keep them apart but print nothing."""
    seen: dict[str, int] = {}
    out = []
    for label in map(str, labels):
        out.append(label + "\u200b" * seen.get(label, 0))
        seen[label] = seen.get(label, 0) + 1
    return out


def bars(labels: Sequence[str], values: Sequence[float], title: str = "", yaxis: str = "", height: int = 320) -> go.Figure:
    fig = go.Figure(go.Bar(x=unique_labels(labels), y=list(values)))
    fig.update_layout(title=title, yaxis_title=yaxis, template="plotly_white", height=height,
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


def heatmap(z, x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None, title: str = "",
            zmin: float | None = None, zmax: float | None = None, colorscale: str = "Blues", height: int = 400) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=[list(map(float, row)) for row in z],
                               x=unique_labels(x_labels) if x_labels is not None else None,
                               y=unique_labels(y_labels) if y_labels is not None else None,
                               zmin=zmin, zmax=zmax, colorscale=colorscale))
    fig.update_layout(title=title, template="plotly_white", height=height, yaxis_autorange="reversed",
                      margin=dict(l=80, r=20, t=50, b=80))
    return fig

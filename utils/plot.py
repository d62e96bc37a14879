"""Small plotly helpers used across the chapters (each returns a figure; call ``.show()``)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go


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


def bars(labels: Sequence[str], values: Sequence[float], title: str = "", yaxis: str = "", height: int = 320) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(labels), y=list(values)))
    fig.update_layout(title=title, yaxis_title=yaxis, template="plotly_white", height=height,
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


def heatmap(z, x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None, title: str = "",
            zmin: float | None = None, zmax: float | None = None, colorscale: str = "Blues", height: int = 400) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=[list(map(float, row)) for row in z], x=list(x_labels) if x_labels is not None else None,
                               y=list(y_labels) if y_labels is not None else None, zmin=zmin, zmax=zmax, colorscale=colorscale))
    fig.update_layout(title=title, template="plotly_white", height=height, yaxis_autorange="reversed",
                      margin=dict(l=80, r=20, t=50, b=80))
    return fig

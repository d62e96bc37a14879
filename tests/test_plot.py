"""utils.plot picks where plotly figures draw: JupyterLab, exported HTML (offline), Colab."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from plotly.offline import get_plotlyjs

from utils import plot


def test_renderer_for_each_environment():
    assert plot.choose_renderer(environ={}, modules={}, in_kernel=True) == "plotly_mimetype+notebook"
    assert plot.choose_renderer(environ={}, modules={"google.colab": object()}, in_kernel=True) == "colab"
    # outside a kernel (a script, pytest) plotly's own default stays
    assert plot.choose_renderer(environ={}, modules={}, in_kernel=False) is None
    # PLOTLY_RENDERER is the user's explicit choice and always wins
    env = {"PLOTLY_RENDERER": "notebook_connected"}
    assert plot.choose_renderer(environ=env, modules={"google.colab": object()}, in_kernel=True) is None


def test_chosen_renderers_exist_in_this_plotly():
    import plotly.io as pio

    for name in (plot.JUPYTER_RENDERER, plot.COLAB_RENDERER):
        assert all(part in pio.renderers for part in name.split("+")), name
    # "notebook" is the part that embeds plotly.js in the output (exported HTML draws offline)
    notebook = pio.renderers["notebook"]
    assert notebook.include_plotlyjs is False and notebook.global_init and not notebook.connected


def test_repeated_labels_keep_their_own_rows_and_columns():
    """Plotly merges equal category labels: a heat map over tokens with "the" twice would draw one
    column too few. The labels come out distinct, and print the same."""
    tokens = ["<bos>", "the", "cat", "saw", "the", "dog", "the"]
    fig = plot.heatmap([[float(i) for i in range(7)]] * 2, tokens, ["a", "a"])
    x, y = list(fig.data[0].x), list(fig.data[0].y)
    assert len(set(x)) == 7 and len(set(y)) == 2
    assert [label.replace("\u200b", "") for label in x] == tokens and x[1] == "the" and x[4] != "the"
    bars = plot.bars(["L0H1", "L0H1", "L1H0"], [1, 2, 3])
    assert len(set(bars.data[0].x)) == 3
    assert plot.unique_labels([3, 3]) == ["3", "3\u200b"]


@pytest.mark.slow  # runs a kernel
def test_exported_html_embeds_plotly_js_and_the_figure(tmp_path, monkeypatch):
    """A notebook that shows a figure, executed in a real kernel and exported with nbconvert,
    carries plotly.js itself and the figure's data: it draws with no internet."""
    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from utils import plot\nimport plotly.io as pio\nprint(pio.renderers.default)"),
        nbformat.v4.new_code_cell('plot.bars(["alpha", "beta"], [0.8125, 2.5], title="export-check figure").show()'),
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert nb.cells[0].outputs[0].text.strip() == "plotly_mimetype+notebook"

    bundles = [o.data for o in nb.cells[1].outputs if o.output_type == "display_data"]
    assert any("application/vnd.plotly.v1+json" in b for b in bundles), "JupyterLab/VS Code need the JSON"

    html, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    (tmp_path / "export.html").write_text(html, encoding="utf-8")
    banner = re.search(r"plotly\.js v[\d.]+", get_plotlyjs()).group(0)
    assert banner in html, "plotly.js is not embedded in the exported HTML"
    assert html.count(banner) == 1, "plotly.js should be embedded once, not per figure"
    assert "Plotly.newPlot" in html and "export-check figure" in html and "0.8125" in html
    cdn_scripts = re.findall(r'<script[^>]+src="[^"]*(?:cdn\.plot\.ly|plotly-[\d.]+\.min\.js)', html)
    assert not cdn_scripts, f"figures must not depend on a CDN: {cdn_scripts}"

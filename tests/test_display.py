"""Tests for utils.display: circuitsvis views that work offline and online."""

import importlib
import json
import re
import socket
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import circuitsvis
import numpy as np
import pytest
import torch
from IPython.display import HTML

import utils.display as display

TOKENS = ["The", " cat", " sat", " on", " the", " mat", ".", " It", " purr", "ed"]
BUNDLE = (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(
    encoding="utf-8")
CDN_URL = f"https://unpkg.com/circuitsvis@{circuitsvis.__version__}/dist/cdn/esm.js"


def make_pattern(n_heads=4, n=len(TOKENS)):
    gen = torch.Generator().manual_seed(0)
    pattern = torch.softmax(torch.randn(n_heads, n, n, generator=gen), -1)
    if n_heads > 2 and n > 5:
        pattern[2, 5, 3] = 0.8125  # distinctive and exactly representable
    return pattern


def props(html: str) -> dict:
    """The JSON props passed to the React component (last argument of render)."""
    match = re.search(r"AttentionHeads,\s*(\{.*\})\s*\)\s*</script>", html, re.S)
    assert match, "render call with props not found"
    return json.loads(match.group(1).replace("<\\/", "</"))


class DivDepth(HTMLParser):
    """Tracks <div> nesting the way a browser does: `<div/>` does NOT close."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.depth_at_course_view = []

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            if ("class", "course-view") in attrs:
                self.depth_at_course_view.append(self.depth)
            self.depth += 1

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)  # HTML ignores the "/" on non-void elements

    def handle_endtag(self, tag):
        if tag == "div":
            self.depth -= 1


def depths_after_each(*views):
    parser = DivDepth()
    depths = []
    for view in views:
        parser.feed(view)
        depths.append(parser.depth)
    parser.close()
    return depths, parser


@pytest.fixture(autouse=True)
def default_mode(monkeypatch):
    monkeypatch.delenv("COURSE_VISUALS", raising=False)
    display.set_visuals("offline")
    yield
    display.set_visuals("offline")


# --- offline vs online --------------------------------------------------------

def test_offline_inlines_the_bundle():
    html = display.attention_heads_html(TOKENS, make_pattern(), mode="offline")
    middle = len(BUNDLE) // 2
    assert BUNDLE[middle:middle + 2000] in html
    assert BUNDLE[-500:].strip() in html
    assert "unpkg.com" not in html
    assert len(html) > 1_000_000


def test_online_uses_cdn_and_is_small():
    html = display.attention_heads_html(TOKENS, make_pattern(), mode="online")
    assert CDN_URL in html
    assert len(html) < 20_000
    middle = len(BUNDLE) // 2
    assert BUNDLE[middle:middle + 200] not in html


def test_default_is_offline_and_set_visuals_switches():
    assert display.VISUALS == "offline"
    assert "unpkg.com" not in display.attention_heads_html(TOKENS, make_pattern())
    display.set_visuals("online")
    assert display.VISUALS == "online"
    assert CDN_URL in display.attention_heads_html(TOKENS, make_pattern())
    # an explicit mode wins over the setting
    assert "unpkg.com" not in display.attention_heads_html(TOKENS, make_pattern(), mode="offline")


# --- HTML structure -----------------------------------------------------------

def test_checker_detects_circuitsvis_bug():
    """Sanity check of DivDepth: raw circuitsvis output leaves a div open."""
    raw = circuitsvis.attention.attention_heads(attention=make_pattern(), tokens=TOKENS).cdn_src
    assert re.search(r"<div[^>]*/>", raw)
    depths, _ = depths_after_each(raw, raw)
    assert depths == [1, 2]


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_views_are_closed_and_wrapped(mode):
    a = display.attention_heads_html(TOKENS, make_pattern(), mode=mode)
    b = display.attention_heads_html(TOKENS[:3], make_pattern(2, 3), mode=mode)
    for view in (a, b):
        head = view.split("<script", 1)[0]
        assert not re.search(r"<div[^>]*/>", head)
        assert view.startswith('<div class="course-view">') and view.endswith("</div>")
    depths, parser = depths_after_each(a, b)
    assert depths == [0, 0]  # the first view does not swallow the second
    assert parser.depth_at_course_view == [0, 0]


def test_script_end_in_a_token_cannot_break_the_page():
    tokens = ["a", "</script>", "<div>", "</SCRIPT >"]
    html = display.attention_heads_html(tokens, np.eye(4), mode="online")
    depths, parser = depths_after_each(html, html)
    assert depths == [0, 0] and parser.depth_at_course_view == [0, 0]
    assert props(html)["tokens"] == tokens


def test_colored_tokens_view():
    html = display.colored_tokens_html(TOKENS, torch.arange(10.0) / 8, mode="online")
    depths, _ = depths_after_each(html, html)
    assert depths == [0, 0]
    assert "ColoredTokens" in html and '" purr"' in html and "0.625" in html
    assert isinstance(display.colored_tokens(TOKENS, np.zeros(10)), HTML)
    with pytest.raises(ValueError, match=r"shape \[10\]"):
        display.colored_tokens_html(TOKENS, np.zeros(9))


# --- payload ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["offline", "online"])
def test_tokens_and_values_round_trip(mode):
    pattern = make_pattern()
    names = ["L0H0", "L0H1", "L1H0", "L1H1"]
    html = display.attention_heads_html(TOKENS, pattern, head_names=names, mode=mode)
    data = props(html)
    assert data["tokens"] == TOKENS
    assert data["attentionHeadNames"] == names
    assert data["attention"][2][5][3] == 0.8125
    np.testing.assert_allclose(np.array(data["attention"]), pattern.numpy(), rtol=1e-6)


def test_single_head_and_other_inputs_accepted():
    eye = np.eye(3)
    for pattern in (eye, eye.tolist(), torch.eye(3, requires_grad=True),
                    torch.eye(3, dtype=torch.bfloat16)):
        data = props(display.attention_heads_html(["a", "b", "c"], pattern, mode="online"))
        assert data["attention"] == [eye.tolist()]


def test_attention_heads_returns_ipython_html():
    view = display.attention_heads(TOKENS, make_pattern(), mode="online")
    assert isinstance(view, HTML)
    assert view._repr_html_() == view.data and CDN_URL in view.data


# --- validation ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 10, 9), (4, 9, 10), (10,), (2, 4, 10, 10), (11, 11)])
def test_shape_errors_are_clear(shape):
    with pytest.raises(ValueError, match=r"pattern must have shape \[n_heads, 10, 10\].*10 tokens"):
        display.attention_heads_html(TOKENS, torch.zeros(shape))


def test_other_input_errors():
    with pytest.raises(ValueError, match="2 head_names for 4 heads"):
        display.attention_heads_html(TOKENS, make_pattern(), head_names=["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        display.attention_heads_html([], np.zeros((1, 0, 0)))
    with pytest.raises(TypeError, match="strings"):
        display.attention_heads_html([1, 2], np.zeros((2, 2)))


def test_mode_validation():
    with pytest.raises(ValueError, match="'offline', 'online'"):
        display.set_visuals("cdn")
    assert display.VISUALS == "offline"
    with pytest.raises(ValueError, match="'offline', 'online'"):
        display.attention_heads_html(TOKENS, make_pattern(), mode="Online ")


def test_env_var(monkeypatch):
    assert display.visuals_from_env() == "offline"
    monkeypatch.setenv("COURSE_VISUALS", "online")
    assert display.visuals_from_env() == "online"
    monkeypatch.setenv("COURSE_VISUALS", "sometimes")
    with pytest.raises(ValueError, match=r"COURSE_VISUALS.*'offline', 'online'.*sometimes"):
        display.visuals_from_env()


def test_env_var_read_at_import(monkeypatch):
    try:
        monkeypatch.setenv("COURSE_VISUALS", "online")
        importlib.reload(display)
        assert display.VISUALS == "online"
        assert CDN_URL in display.attention_heads_html(TOKENS, make_pattern())
        monkeypatch.setenv("COURSE_VISUALS", "bogus")
        with pytest.raises(ValueError, match="COURSE_VISUALS"):
            importlib.reload(display)
    finally:
        monkeypatch.delenv("COURSE_VISUALS")
        importlib.reload(display)
    assert display.VISUALS == "offline"


# --- no network -----------------------------------------------------------------

def test_no_network_access(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in test")

    # circuitsvis swallows errors from its probe, so record attempts, not just raise.
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    for mode in ("offline", "online"):
        display.set_visuals(mode)
        html = display.attention_heads_html(TOKENS, make_pattern())
        view = display.attention_heads(TOKENS, make_pattern())
        assert view._repr_html_() == view.data
        assert ("unpkg.com" in html) == (mode == "online")
        display.colored_tokens(TOKENS, np.zeros(10))._repr_html_()
    assert attempts == []

"""Proof in a real browser that the chapters' visuals are drawn (marks: browser, slow).

* JupyterLab is started on a temporary copy of chapter 2 (the solutions version: it has both
  attention views and plotly figures), headless Chromium opens it, runs every cell, and the test
  measures what was drawn: each plotly figure's SVG with non-zero size and drawn traces, and
  each circuitsvis view (in its ``.course-view`` container) with drawn elements of non-zero size.
* An nbconvert HTML export of a small notebook is opened with the browser's network switched
  off: its figure and attention view must draw from what the file carries.

Screenshots are saved in pytest's temporary folder (paths printed; see them with ``-s``).

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``; ``.ci/run`` does it when run as root). Without them the tests are skipped,
except in CI (``CI`` set), where they fail. The browser is never downloaded: selenium is given
``/usr/bin/chromedriver`` explicitly, so Selenium Manager is never used.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The chapters run in the browser, with the figures and attention views each must draw at least:
# chapter 2 (attention views and plotly figures), chapter 5 (plotly figures, SAE training),
# chapter 6 (plotly figures, live training with subplots and shaded phases) and chapter 7
# (plotly figures: probe accuracies, a causal sweep, a steering Pareto plot).
CHAPTERS = {"02_induction_heads": (3, 2), "05_sparse_autoencoders": (8, 0), "06_grokking": (8, 0),
            "07_linear_representations": (3, 0)}
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The chapter's training runs are cut to this many steps (COURSE_DEMO_STEPS): what is measured
# here is what the browser draws, not what the model learns (tests/test_induction.py proves that).
DEMO_STEPS = "150"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    why = (f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
           "(apt-get install chromium chromium-driver)")
    if os.environ.get("CI"):
        pytest.fail(f"{why}. In CI the browser test must run, not be skipped (.ci/run installs them as root).")
    pytest.skip(why)


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1400,1000",
                 # nothing leaves the machine: every host but 127.0.0.1 fails to resolve, so
                 # what is drawn comes from the page itself (badge images just don't load)
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_log(driver) -> str:
    try:
        entries = driver.get_log("browser")
    except Exception as e:  # the log is for failure messages; never fail because of it
        return f"(browser console log unavailable: {e})"
    lines = [f"{e.get('level')}: {e.get('message')}"[:500] for e in entries]
    return "browser console:\n  " + "\n  ".join(lines[-60:]) if lines else "browser console: (empty)"


def wait_for(driver, what: str, probe, timeout: float, interval: float = 1.0, describe=None):
    """Call probe() until it returns something truthy; fail with the page's console log."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as e:  # a page still loading can make scripts fail
            last = f"{type(e).__name__}: {e}"
        if last and not isinstance(last, str):
            return last
        time.sleep(interval)
    extra = describe() if describe else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last state: {last}\n{extra}\n"
                f"{console_log(driver)}")


def screenshot(element_or_driver, path: Path) -> Path:
    take = getattr(element_or_driver, "screenshot", None) or element_or_driver.save_screenshot
    take(str(path))
    print(f"screenshot: {path}")
    return path


# What was drawn, measured in the page.
MEASURE_JS = r"""
const size = e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
const drawn = e => { const [w, h] = size(e); return w > 0 && h > 0; };
const plots = Array.from(document.querySelectorAll('.js-plotly-plot')).map((p, i) => {
  const svg = p.querySelector('.main-svg');
  const marks = Array.from(p.querySelectorAll('.cartesianlayer .trace path, .barlayer path'))
    .filter(e => (e.getAttribute('d') || '').length > 10 && drawn(e)).length
    + Array.from(p.querySelectorAll('.heatmaplayer image')).filter(drawn).length;
  p.setAttribute('data-course-test', 'plot-' + i);
  return {index: i, size: size(p), svg: svg ? size(svg) : null, marks,
          title: (p.querySelector('.gtitle') || {}).textContent || ''};
});
const views = Array.from(document.querySelectorAll('.course-view')).map((v, i) => {
  const root = v.querySelector('div[id^="circuits-vis"]') || v.firstElementChild;
  const graphics = Array.from(v.querySelectorAll('canvas, svg')).filter(drawn).length;
  v.setAttribute('data-course-test', 'view-' + i);
  return {index: i, size: size(v), root: root ? size(root) : null,
          elements: root ? root.querySelectorAll('*').length : 0, graphics,
          text: (v.innerText || '').slice(0, 80)};
});
return {plots, views};
"""


def check_drawn(driver, measured: dict, min_plots: int, min_views: int) -> None:
    plots, views = measured["plots"], measured["views"]
    report = json.dumps(measured, indent=1)
    if len(plots) < min_plots or len(views) < min_views:
        pytest.fail(f"expected at least {min_plots} plotly figures and {min_views} attention views "
                    f"in the page, found {len(plots)} and {len(views)}:\n{report}\n{console_log(driver)}")
    bad_plots = [p for p in plots if not p["svg"] or min(p["svg"]) < 100 or p["marks"] < 1]
    bad_views = [v for v in views if not v["root"] or min(v["root"]) < 20 or v["elements"] < 5 or v["graphics"] < 1]
    assert not bad_plots and not bad_views, (
        f"not drawn: plots {bad_plots}, views {bad_views}\n{report}\n{console_log(driver)}")


def save_screenshots(driver, measured: dict, folder: Path, prefix: str) -> list[Path]:
    from selenium.webdriver.common.by import By

    folder.mkdir(parents=True, exist_ok=True)
    shots = []
    for kind, key in (("view", "views"), ("plot", "plots")):
        for item in measured[key][:2]:
            el = driver.find_element(By.CSS_SELECTOR, f'[data-course-test="{kind}-{item["index"]}"]')
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
            time.sleep(0.5)
            shots.append(screenshot(el, folder / f"{prefix}-{kind}-{item['index']}.png"))
    shots.append(screenshot(driver, folder / f"{prefix}-window.png"))
    return shots


# --- JupyterLab ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_chapter(dest: Path, name: str) -> Path:
    """A copy of a solution notebook to open (the original is only read)."""
    path = dest / f"{name}.ipynb"
    shutil.copy(ROOT / "solutions" / path.name, path)
    return path


@pytest.fixture(params=list(CHAPTERS))
def chapter(request) -> str:
    return request.param


@pytest.fixture
def jupyterlab(tmp_path, chapter):
    """(base URL, token, log reader) of a JupyterLab server whose root is a temporary folder
    holding a copy of the chapter; its settings, runtime files and kernels' history stay there too."""
    _require_browser()
    root = tmp_path / "notebooks"
    root.mkdir()
    prepare_chapter(root, chapter)
    state = tmp_path / "jupyter"
    settings = state / "lab-settings"
    # Draw every cell (JupyterLab 4 otherwise skips laying out cells far off screen), no news pop-ups.
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PLOTLY_RENDERER", "JUPYTER_TOKEN")}
    env.update(JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTER_DATA_DIR=str(state / "data"), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"), IPYTHONDIR=str(state / "ipython"),
               COURSE_VISUALS="offline", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               COURSE_DEMO_STEPS=DEMO_STEPS)
    port, token = free_port(), secrets.token_hex(16)
    log_path = tmp_path / "jupyterlab.log"
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser",
         "--ServerApp.open_browser=False", "--LabApp.expose_app_in_browser=True",
         f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def server_log() -> str:
        return "JupyterLab log (end):\n" + log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}\n{server_log()}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within 120 s\n{server_log()}")
            time.sleep(1)
        yield base, token, server_log
    finally:
        try:  # shuts down the kernels too
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=10).close()
            server.wait(timeout=30)
        except Exception:
            pass
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)  # the group this fixture started
                server.wait()
        log.close()


NOTEBOOK_STATE_JS = r"""
const app = window.jupyterapp;
if (!app || !app.shell) return 'JupyterLab not loaded';
const panel = app.shell.currentWidget;
if (!panel || !panel.sessionContext || !panel.content) return 'no notebook open';
if (!panel.context.isReady) return 'notebook loading';
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
for (const c of cells) {
  for (const o of c.model.outputs.toJSON()) {
    if (o.output_type === 'error') errors.push(c.model.sharedModel.getSource().slice(0, 200) + '\n' +
                                                 o.ename + ': ' + o.evalue);
  }
}
return {kernel: kernel ? kernel.status : null, cells: cells.length,
        executed: cells.filter(c => c.model.executionCount !== null).length,
        run: window.__courseRun || null, errors};
"""


@pytest.mark.timeout(1800)
def test_chapter_draws_its_figures_and_attention_views_in_jupyterlab(browser, jupyterlab, chapter, tmp_path):
    base, token, server_log = jupyterlab
    min_plots, min_views = CHAPTERS[chapter]
    started = time.monotonic()
    browser.get(f"{base}/lab/tree/{chapter}.ipynb?token={token}")

    def state():
        return browser.execute_script(NOTEBOOK_STATE_JS)

    def describe():
        return f"notebook state: {state()}\n{server_log()}"

    def opened():
        s = state()
        return s if isinstance(s, dict) and s["kernel"] == "idle" else str(s)

    wait_for(browser, "the notebook to open with an idle kernel", opened, 180, describe=describe)
    browser.execute_script("""
        window.__courseRun = null;
        window.jupyterapp.commands.execute('notebook:run-all-cells').then(
            ok => { window.__courseRun = {done: true, ok: ok}; },
            err => { window.__courseRun = {done: true, error: String(err)}; });""")

    last_report = [0.0]

    def finished():
        s = state()
        if not isinstance(s, dict):
            return s
        if time.monotonic() - last_report[0] > 30:
            last_report[0] = time.monotonic()
            print(f"[{time.monotonic() - started:5.0f} s] {s['executed']}/{s['cells']} code cells run")
        if s["errors"]:
            pytest.fail("a cell raised in JupyterLab:\n" + "\n\n".join(s["errors"]) + f"\n{console_log(browser)}")
        # Only the command's promise says when the run is over: the kernel status JupyterLab
        # shows can read "idle" while a cell still runs (control-channel replies set it too).
        done = s["run"] and s["run"].get("done") and s["kernel"] == "idle"
        return s if done else f"{s['executed']}/{s['cells']} cells run, kernel {s['kernel']}"

    result = wait_for(browser, "every cell to run", finished, 1500, interval=2, describe=describe)
    assert result["run"].get("ok") is True, f"run-all did not succeed: {result}\n{console_log(browser)}"
    assert result["executed"] == result["cells"], result
    print(f"all {result['cells']} code cells ran in {time.monotonic() - started:.0f} s")

    # Give asynchronous renderers (React, plotly) a moment, then measure what is drawn.
    def all_there():
        m = browser.execute_script(MEASURE_JS)
        return m if len(m["plots"]) >= min_plots and len(m["views"]) >= min_views else json.dumps(m)

    measured = wait_for(browser, "the figures and views to appear", all_there, 60)
    for item in measured["plots"] + measured["views"]:
        print(json.dumps(item))
    save_screenshots(browser, measured, tmp_path / "screenshots", "jupyterlab")
    check_drawn(browser, measured, min_plots=min_plots, min_views=min_views)


@pytest.mark.timeout(600)
def test_exported_html_draws_without_network(browser, tmp_path, monkeypatch):
    """nbconvert's HTML of an executed notebook draws its figure and attention view offline."""
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import torch\nfrom utils import plot\nfrom utils.display import attention_heads"),
        nbformat.v4.new_code_cell('plot.bars(["alpha", "beta", "gamma"], [1.0, 2.5, 1.5], title="exported figure").show()'),
        nbformat.v4.new_code_cell('pattern = torch.softmax(torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(0)), -1)\n'
                                  'attention_heads(["a", "b", "c", "d", "e"], pattern.tril())'),
    ]
    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    monkeypatch.setenv("COURSE_VISUALS", "offline")  # the kernel inherits this environment
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    page = tmp_path / "export.html"
    page.write_text(html, encoding="utf-8")

    browser.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    browser.get(page.as_uri())
    def drawn():
        m = browser.execute_script(MEASURE_JS)
        ok = m["plots"] and m["views"] and m["plots"][0]["marks"] and m["views"][0]["graphics"]
        return m if ok else json.dumps(m)

    measured = wait_for(browser, "the exported figure and view to be drawn", drawn, 60)
    save_screenshots(browser, measured, tmp_path / "screenshots", "export")
    check_drawn(browser, measured, min_plots=1, min_views=1)


@pytest.mark.parametrize("ci", ["", "1"])
def test_missing_browser_skips_locally_but_fails_in_ci(monkeypatch, tmp_path, ci):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception if ci else pytest.skip.Exception, match="chromium"):
        _require_browser()


# --- the learner's lab, as ./course lab starts it --------------------------------------------

LEARNER_LAB_JS = r"""
const app = window.jupyterapp;
if (!app || !app.shell) return 'JupyterLab not loaded';
const panel = app.shell.currentWidget;
if (!panel || !panel.context || !panel.context.isReady) return 'no document open yet';
const text = el => (el.textContent || '').trim();
const menus = Array.from(document.querySelectorAll('.lm-MenuBar-itemLabel')).map(text);
const titles = Array.from(document.querySelectorAll('[title], [data-id], .lm-TabBar-tabLabel, button, .jp-ToolbarButtonComponent-label'))
  .map(e => [e.getAttribute('title') || '', e.getAttribute('data-id') || '', text(e)].join(' | '));
const plugins = app.listPlugins ? app.listPlugins().filter(id => id.includes('nbgrader')) : [];
const browser = Array.from(document.querySelectorAll('.jp-DirListing-itemName')).map(text);
return {path: panel.context.path, menus, plugins, browser,
        teacher: titles.filter(t => /create assignment|validate|formgrader|nbgrader/i.test(t))};
"""


@pytest.mark.timeout(600)
def test_course_lab_opens_chapter_1_at_the_root_without_teacher_tools(browser, tmp_path):
    """``./course lab`` itself (with this environment): chapter 1 in front, the repository root
    in the file browser, no nbgrader menu, Create Assignment panel or Validate button, and no
    complaints about a missing nbgrader_config.py in the server's log."""
    chapter = ROOT / "chapters" / "01_transformer_from_scratch.ipynb"
    before = chapter.read_bytes()
    state = tmp_path / "jupyter"
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "JUPYTER_CONFIG_PATH")}
    env.update(COURSE_VENV=sys.prefix, JUPYTER_CONFIG_DIR=str(state / "config"),
               JUPYTER_RUNTIME_DIR=str(state / "runtime"), JUPYTER_DATA_DIR=str(state / "data"),
               JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"), IPYTHONDIR=str(state / "ipython"))
    port, token = free_port(), secrets.token_hex(16)
    log_path = tmp_path / "course-lab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            ["bash", str(ROOT / "course"), "lab", "--no-browser", "--LabApp.expose_app_in_browser=True",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={token}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server_log = lambda: log_path.read_text(errors="replace")  # noqa: E731
    try:
        # The address `./course lab` would open in the learner's browser: Jupyter writes it
        # into the runtime folder's jpserver-file-to-run-<pid>-open.html.
        deadline = time.monotonic() + 180
        target = None
        while target is None:
            if server.poll() is not None:
                pytest.fail(f"./course lab exited with {server.returncode}\n{server_log()[-4000:]}")
            for page in (state / "runtime").glob("jpserver-file-to-run-*-open.html"):
                found = re.search(r'href="([^"]+)"', page.read_text(encoding="utf-8"))
                target = found.group(1) if found else None
            if time.monotonic() > deadline:
                pytest.fail(f"./course lab wrote no browser page within 180 s\n{server_log()[-4000:]}")
            time.sleep(1)
        assert "/lab/tree/chapters/01_transformer_from_scratch.ipynb" in target, target
        browser.get(target.replace("localhost", "127.0.0.1"))

        def ready():
            s = browser.execute_script(LEARNER_LAB_JS)
            return s if isinstance(s, dict) and s["browser"] and s["menus"] else str(s)

        seen = wait_for(browser, "chapter 1 to open in the learner's lab", ready, 180,
                        describe=lambda: server_log()[-4000:])
        time.sleep(2)  # late plugins (toolbars, side panels) have had time to appear
        seen = browser.execute_script(LEARNER_LAB_JS)
        screenshot(browser, tmp_path / "course-lab.png")
        print(json.dumps(seen))
        assert seen["path"] == "chapters/01_transformer_from_scratch.ipynb", seen
        assert "01_transformer_from_scratch.ipynb" in seen["browser"], seen["browser"]
        # The server's root is the repository, so what the prose points to is one click away:
        # the breadcrumb's root, and the relative links in the chapter.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=30) as r:
            root_names = {item["name"] for item in json.load(r)["content"]}
        assert {"chapters", "solutions", "utils"} <= root_names, root_names
        # chapter 1's first cell links to its solutions (JupyterLab rewrites the relative link)
        browser.execute_script("""
            const a = Array.from(document.querySelectorAll('.jp-RenderedMarkdown a'))
                .find(a => (a.getAttribute('href') || '').includes('/solutions/01_transformer_from_scratch.ipynb'));
            if (!a) throw new Error('chapter 1 has no rendered link to its solutions');
            a.click();""")
        wait_for(browser, "the link to the solutions to open them", lambda: (
            browser.execute_script("return window.jupyterapp.shell.currentWidget.context.path")
            == "solutions/01_transformer_from_scratch.ipynb") or "not yet", 60)
        assert "File" in seen["menus"] and not any("nbgrader" in m.lower() for m in seen["menus"]), seen["menus"]
        assert seen["plugins"] == [], f"nbgrader's lab plugins are loaded: {seen['plugins']}"
        assert seen["teacher"] == [], f"teacher tools are shown: {seen['teacher']}"
        assert "nbgrader_config" not in server_log(), server_log()[-4000:]
        assert "nbgrader" not in server_log().lower(), "nbgrader's server extensions were loaded"
    finally:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=10).close()
            server.wait(timeout=30)
        except Exception:
            pass
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert chapter.read_bytes() == before, "opening the lab changed the learner's chapter"

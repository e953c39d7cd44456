"""End to end in a real browser: JupyterLab started here, Debian's Chromium driven by Playwright.

Opens notebooks/quickstart.ipynb, runs every cell, and checks what a person would see: the live chart
renders and its loss trace grows while training runs, and the chat cell answers. Screenshots are saved
under test-artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import execute_notebook

REPO = Path(__file__).parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]

# The browser tier (`make test-browser`).
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason="Debian chromium is not installed (`make test` installs it)")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyter(app: str, tmp_path: Path, tmp_path_factory):
    """A Jupyter server (`jupyterlab` or Notebook 7's `notebook`) on loopback, rooted in a folder holding a
    copy of the quickstart."""
    from nbfinetune.testing import make_tiny_model

    # Bigger than the unit-test model, so 40 steps take a few seconds and the chart visibly grows.
    model = make_tiny_model(tmp_path_factory.mktemp("small") / "model", layers=4, hidden=256)
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "quickstart.ipynb", root / "quickstart.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, NBFINETUNE_HOME=str(tmp_path / "home"), NBFINETUNE_DEFAULT_MODEL=str(model),
               HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"))
    built = REPO / "nbfinetune" / "labextension"
    if (built / "package.json").is_file():  # this checkout's sidebar build, ahead of an installed copy
        extensions = tmp_path / "jupyter-data" / "labextensions"
        extensions.mkdir(parents=True)
        (extensions / "nbfinetune").symlink_to(built)
        env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(tmp_path / "jupyter-data"), os.environ.get("JUPYTER_PATH")]))
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", app, "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as reply:
                json.load(reply)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"{app} did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
            time.sleep(0.5)
    try:
        yield f"http://127.0.0.1:{port}", token, model
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def lab(tmp_path, tmp_path_factory):
    with jupyter("jupyterlab", tmp_path, tmp_path_factory) as served:
        yield served


@contextlib.contextmanager
def browser_page(name: str):
    """A Chromium page; on failure a screenshot test-artifacts/<name>-failure.png is kept."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            yield page
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"))
            raise
        finally:
            browser.close()


def open_notebook(page, url: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    try:  # JupyterLab may still ask which kernel to start; the preselected one is ours
        page.click(".jp-Dialog button.jp-mod-accept", timeout=15_000)
    except PlaywrightTimeout:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)


def run_quickstart_and_check(page, url: str, name: str) -> None:
    """Run All Cells; the live chart's loss trace must grow to 40 points while training runs, the chat
    cell must answer, and no cell may show a traceback."""
    open_notebook(page, url)
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")

    page.wait_for_selector(".nbfinetune-dashboard .js-plotly-plot", timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / f"{name}-dashboard-live.png"))
    lengths = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        length = page.evaluate("""() => {
            const plot = document.querySelector('.nbfinetune-dashboard .js-plotly-plot');
            return plot && plot.data && plot.data[0].x ? plot.data[0].x.length : 0; }""")
        if not lengths or length != lengths[-1]:
            lengths.append(length)
        if length >= 40:
            break
        time.sleep(0.1)
    assert lengths[-1] == 40, lengths
    assert len([n for n in lengths if 0 < n < 40]) >= 1, f"the trace never grew while training: {lengths}"
    assert lengths == sorted(lengths)

    # The chat cell answers (its output is the streamed text), and the last cell ran.
    chat_cell = page.locator(".jp-CodeCell:has(.jp-InputArea:has-text('%%chat'))")
    chat_cell.locator(".jp-OutputArea-output").first.wait_for(timeout=240_000)
    page.wait_for_function("""() => {
        const cells = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
        return cells.length && /\\[\\d+\\]/.test(cells[cells.length - 1].textContent); }""", timeout=240_000)
    answer = chat_cell.locator(".jp-OutputArea-output").all_inner_texts()
    assert "".join(answer).strip(), "the chat cell printed nothing"
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                          ":has-text('Traceback')")
    assert errors.count() == 0, errors.all_inner_texts()
    chat_cell.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}-chat.png"))
    page.locator(".nbfinetune-dashboard").scroll_into_view_if_needed()
    page.locator(".nbfinetune-dashboard").screenshot(path=str(ARTIFACTS / f"{name}-dashboard-final.png"))


def test_quickstart_in_jupyterlab(lab):
    base, token, _model = lab
    with browser_page("browser") as page:
        run_quickstart_and_check(page, f"{base}/lab/tree/quickstart.ipynb?token={token}", "browser")


def test_quickstart_in_notebook_7(tmp_path, tmp_path_factory):
    """The same notebook in Jupyter Notebook 7: the widgets, the live chart and the chat work there too."""
    with jupyter("notebook", tmp_path, tmp_path_factory) as (base, token, _model):
        with browser_page("notebook7") as page:
            run_quickstart_and_check(page, f"{base}/notebooks/quickstart.ipynb?token={token}", "notebook7")


def test_fine_tunes_sidebar_is_live_and_attaches(lab, home):
    """The labextension: the sidebar lists runs, a status changes live, clicking attaches the dashboard."""
    from nbfinetune import api

    base, token, model = lab
    done = api.finetune(model=str(model), steps=3, eval_samples=0, display=False, name="finished-one")
    assert done.wait(timeout=120, progress=False).status == "finished"
    with browser_page("sidebar") as page:
        open_notebook(page, f"{base}/lab/tree/quickstart.ipynb?token={token}")
        page.click("li.lm-TabBar-tab[data-id='nbfinetune-runs']")
        finished = page.locator(f".nbft-run[data-run-id='{done.id}']")
        finished.wait_for(timeout=30_000)
        assert finished.get_attribute("data-status") == "finished"
        assert "finished-one" in finished.inner_text()

        live = api.finetune(model=str(model), steps=150, eval_samples=0, display=False)
        item = page.locator(f".nbft-run[data-run-id='{live.id}']")
        page.wait_for_selector(f".nbft-run[data-run-id='{live.id}'][data-status='running']", timeout=60_000)
        assert item.locator(".nbft-cancel").count() == 1
        page.screenshot(path=str(ARTIFACTS / "sidebar-running.png"))
        page.wait_for_selector(f".nbft-run[data-run-id='{live.id}'][data-status='finished']", timeout=180_000)
        assert item.locator("polyline").count() == 1  # the loss sparkline

        item.click()  # inserts and runs `nbft.attach(...)` in the open notebook
        chart = page.locator(".jp-CodeCell:has-text('nbft.attach') .nbfinetune-dashboard .js-plotly-plot")
        chart.wait_for(timeout=120_000)
        assert chart.evaluate("plot => plot.data[0].x.length") == 150  # replayed at once
        page.screenshot(path=str(ARTIFACTS / "sidebar-attached.png"))


def _write_notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)


def _chart_points(page) -> int:
    return page.evaluate("""() => {
        const plot = document.querySelector('.nbfinetune-dashboard .js-plotly-plot');
        return plot && plot.data && plot.data[0].x ? plot.data[0].x.length : 0; }""")


def test_the_dashboard_chart_survives_a_page_reload(lab, tmp_path):
    """Reload the page while the kernel lives: the widgets come back from the kernel's state, chart included."""
    base, token, _model = lab
    _write_notebook(tmp_path / "lab" / "reload.ipynb", [
        "import nbfinetune as nbft", "run = nbft.finetune(steps=8, eval_samples=0, name='reloaded')",
        "summary = run.wait()"])
    with browser_page("reload") as page:
        url = f"{base}/lab/tree/reload.ipynb?token={token}"
        open_notebook(page, url)
        page.click(".lm-MenuBar-item:has-text('Run')")
        page.click(".lm-Menu-item:has-text('Run All Cells')")
        page.wait_for_function("""() => {
            const plot = document.querySelector('.nbfinetune-dashboard .js-plotly-plot');
            return plot && plot.data && plot.data[0].x && plot.data[0].x.length === 8; }""", timeout=240_000)
        page.wait_for_function("""() => {
            const cells = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            return cells.length === 3 && /\\[\\d+\\]/.test(cells[2].textContent); }""", timeout=240_000)
        page.keyboard.press("Control+s")
        page.wait_for_selector(".jp-mod-dirty", state="detached", timeout=30_000)

        page.reload()
        open_notebook(page, url)
        dashboard = page.locator(".nbfinetune-dashboard")
        dashboard.wait_for(timeout=60_000)
        page.wait_for_function("""() => {
            const plot = document.querySelector('.nbfinetune-dashboard .js-plotly-plot');
            return plot && plot.data && plot.data[0].x && plot.data[0].x.length > 0; }""", timeout=60_000)
        assert _chart_points(page) == 8
        assert "reloaded" in dashboard.inner_text() and "finished" in dashboard.inner_text()
        dashboard.screenshot(path=str(ARTIFACTS / "reload-dashboard.png"))


def test_the_sidebar_deletes_a_finished_run_after_confirmation(lab, home):
    from nbfinetune import api
    from nbfinetune.runs import RunStore

    base, token, model = lab
    done = api.finetune(model=str(model), steps=2, eval_samples=0, display=False, name="to-delete")
    assert done.wait(timeout=120, progress=False).status == "finished"
    with browser_page("sidebar-delete") as page:
        open_notebook(page, f"{base}/lab/tree/quickstart.ipynb?token={token}")
        page.click("li.lm-TabBar-tab[data-id='nbfinetune-runs']")
        item = page.locator(f".nbft-run[data-run-id='{done.id}']")
        item.wait_for(timeout=30_000)
        item.locator(".nbft-delete").click()
        dialog = page.locator(".jp-Dialog")
        assert "to-delete" in dialog.inner_text()
        dialog.locator("button:has-text('Keep it')").click()
        assert RunStore().exists(done.id)
        item.locator(".nbft-delete").click()
        page.locator(".jp-Dialog button:has-text('Delete run')").click()
        item.wait_for(state="detached", timeout=30_000)
        assert not RunStore().exists(done.id)


def test_a_reopened_saved_notebook_shows_its_charts_without_network(lab, tmp_path):
    """A notebook executed elsewhere (nbclient here) and opened in JupyterLab: the widgets' kernel is gone and
    the notebook is not trusted, so Lab shows each output's HTML copy — charts must draw from it, offline."""
    import nbformat

    base, token, model = lab
    path = tmp_path / "lab" / "reopened.ipynb"
    _write_notebook(path, ["import nbfinetune as nbft", "run = nbft.finetune(steps=4, eval_samples=0, name='saved')",
                           "run.wait()", "run.plot()", "nbft.preflight('sample:people')"])
    notebook = nbformat.read(path, as_version=4)
    env = {"NBFINETUNE_HOME": str(tmp_path / "home"), "NBFINETUNE_DEFAULT_MODEL": str(model), "HF_HUB_OFFLINE": "1"}
    execute_notebook(notebook, path.parent, env, timeout=300)
    nbformat.write(notebook, path)
    with browser_page("reopen") as page:
        page.context.route(lambda url: not url.startswith(base), lambda route: route.abort())  # no CDN
        open_notebook(page, f"{base}/lab/tree/reopened.ipynb?token={token}")
        charts = page.locator(".jp-OutputArea-output img.nbft-static-chart")
        charts.first.wait_for(timeout=60_000)
        assert charts.count() == 2  # the dashboard's and the pre-flight's copies
        for index in range(2):
            charts.nth(index).scroll_into_view_if_needed()
            assert charts.nth(index).evaluate("img => img.complete && img.naturalWidth > 100")
        # run.plot(): Lab's own plotly renderer (bundled, no CDN) draws its plotly JSON
        page.locator(".jp-CodeCell:has-text('run.plot()')").scroll_into_view_if_needed()
        plot = page.locator(".jp-CodeCell:has-text('run.plot()') .js-plotly-plot")
        plot.first.wait_for(timeout=30_000)
        assert plot.first.evaluate("plot => plot.data[0].x.length") == 4
        assert "Preflight(children" not in page.locator(".jp-Notebook").inner_text()
        assert "saved" in page.locator(".jp-Notebook").inner_text()
        page.screenshot(path=str(ARTIFACTS / "reopen.png"), full_page=True)

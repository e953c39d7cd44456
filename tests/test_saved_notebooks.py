"""A saved notebook of typical work — pre-flight, two runs, compare, chat — stays small and shows its charts
anywhere: in the .ipynb (static SVG copies next to every widget) and in a static HTML export opened in
Chromium with the network off (what nbviewer / VS Code without a kernel see)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import nbformat
import pytest

from tests.helpers import execute_notebook

# The notebook tier: a notebook of typical work executes in a kernel.
pytestmark = pytest.mark.notebook

CELLS = [
    "%load_ext nbfinetune\nimport nbfinetune as nbft",
    "%finetune check sample:people",
    "first = %finetune --data sample:people --steps 6 --eval-samples 2 --name first",
    "first.wait()",
    "second = %finetune --data sample:people --steps 6 --lr 1e-3 --eval-samples 2 --name second",
    "second.wait()",
    "nbft.compare([first, second])",
    "first.chat()",
    "first.chat('Who is Ada?', max_new_tokens=8)",
    "first.plot()",
]
MAX_BYTES = 2_000_000


@pytest.fixture(scope="module")
def typical_notebook(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("typical")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    env = {"NBFINETUNE_HOME": str(folder / "home"), "NBFINETUNE_DEFAULT_MODEL": tiny_model, "HF_HUB_OFFLINE": "1"}
    # nbclient stores every widget's state in the notebook, as a runner of saved notebooks would
    execute_notebook(notebook, folder, env, timeout=600, store_widget_state=True)
    path = folder / "typical.ipynb"
    nbformat.write(notebook, path)
    return path


def _svg_images(html: str) -> list[str]:
    return [base64.b64decode(m).decode() for m in re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html)]


def test_a_saved_notebook_of_typical_work_is_small_and_keeps_its_charts(typical_notebook):
    notebook = nbformat.read(typical_notebook, as_version=4)
    errors = [o for c in notebook.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    size = typical_notebook.stat().st_size
    print(f"saved notebook of typical work: {size:,} bytes")
    assert size < MAX_BYTES, f"{size:,} bytes"
    static = [o.data["text/html"] for c in notebook.cells for o in c.outputs if "text/html" in o.get("data", {})]
    charts = [svg for html in static for svg in _svg_images(html)]
    # pre-flight histogram, two dashboards, the comparison, run.plot()
    assert len(charts) >= 5 and all("<path" in svg or "<rect class='bar'" in svg for svg in charts)
    assert not any("cdn.plot.ly" in html or "<script" in html for html in static)
    text = "".join(o.get("data", {}).get("text/plain", "") for c in notebook.cells for o in c.outputs)
    assert "children=" not in text  # no `Preflight(children=(VBox(...` as the saved view


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")
def test_the_html_export_shows_every_chart_offline(typical_notebook, tmp_path):
    """Saved as JupyterLab and VS Code save (no widget state), exported by nbconvert, opened offline."""
    from nbconvert import HTMLExporter
    from playwright.sync_api import sync_playwright

    notebook = nbformat.read(typical_notebook, as_version=4)
    notebook.metadata.pop("widgets", None)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    page_path = tmp_path / "typical.html"
    page_path.write_text(html, encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        context.set_offline(True)
        context.route(re.compile(r"^https?://"), lambda route: route.abort())
        page = context.new_page()
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        charts = page.locator("img.nbft-static-chart")
        assert charts.count() >= 5
        for index in range(charts.count()):
            chart = charts.nth(index)
            chart.scroll_into_view_if_needed()
            assert chart.evaluate("img => img.complete && img.naturalWidth > 100"), f"chart {index} did not draw"
            assert len(set(chart.screenshot())) > 50  # a drawn chart, not a blank box
        assert "Error displaying widget" not in page.content()
        browser.close()

"""The tutorial notebooks execute clean. Fast: with a tiny model. Slow: the real offline demo model,
which must measurably improve (the quickstart's promise)."""

import os
import re
from pathlib import Path

import nbformat
import pytest

from tests.helpers import execute_notebook

# The notebook tier: each test executes a tutorial notebook in a kernel.
pytestmark = pytest.mark.notebook

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def execute(name: str, env: dict[str, str], tmp_path: Path, timeout: int) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    execute_notebook(notebook, tmp_path, env, timeout)
    nbformat.write(notebook, tmp_path / name)
    return notebook


def outputs_of(notebook, source_start: str) -> list:
    cells = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    assert cells, f"no cell starting with {source_start!r}"
    return cells[0].outputs


def text_of(outputs) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


def check_quickstart(notebook) -> None:
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    launch = outputs_of(notebook, "run = %finetune")
    dashboard = next(o.data for o in launch if "application/vnd.jupyter.widget-view+json" in o.get("data", {}))
    # Without a kernel the widget vanishes; the static snapshot of the finished run stays.
    assert "finished" in dashboard["text/html"] and "application/vnd.plotly.v1+json" not in dashboard
    assert "data:image/svg+xml;base64," in dashboard["text/html"] and "<script" not in dashboard["text/html"]
    chart = outputs_of(notebook, "run.plot()")
    figure = next(o.data["application/vnd.plotly.v1+json"] for o in chart if "data" in o)
    assert len(figure["data"][0]["x"]) == 40  # train loss, one point per step
    assert "finished" in text_of(outputs_of(notebook, "summary = run.wait()"))
    assert text_of(outputs_of(notebook, "%%chat")).strip()
    assert text_of(outputs_of(notebook, "from openai import OpenAI")).strip()  # the served run answered
    assert "nbft-" not in text_of(outputs_of(notebook, "server = run.serve()"))  # no key in the saved notebook


def test_quickstart_executes_with_a_tiny_model(tmp_path, tiny_model):
    env = {"NBFINETUNE_HOME": str(tmp_path / "home"), "NBFINETUNE_DEFAULT_MODEL": tiny_model, "HF_HUB_OFFLINE": "1"}
    check_quickstart(execute("quickstart.ipynb", env, tmp_path, timeout=600))


@pytest.mark.slow
def test_quickstart_on_the_demo_model_improves_the_score(tmp_path):
    """The real thing: SmolLM2-135M-Instruct from the shipped GGUF, 40 LoRA steps on CPU."""
    from nbfinetune.core.models import converted_dir

    home = tmp_path / "home"
    models = home / "models"
    models.mkdir(parents=True)
    # Reuse the converted demo model prepared by `make test-slow` instead of converting again.
    os.symlink(converted_dir(), models / converted_dir().name)
    env = {"NBFINETUNE_HOME": str(home), "NBFINETUNE_DEFAULT_MODEL": "", "HF_HUB_OFFLINE": "1"}
    notebook = execute("quickstart.ipynb", env, tmp_path, timeout=3600)
    check_quickstart(notebook)
    scores = text_of(outputs_of(notebook, "base, tuned"))
    base, tuned = (int(x) for x in re.search(r"base model: (\d+)% .* fine-tuned: (\d+)%", scores).groups())
    assert tuned >= base + 50, scores
    answer = text_of(outputs_of(notebook, "%%chat"))
    assert '"name": "Ada"' in answer and '"age": 36' in answer, answer


def test_evaluate_and_compare_executes_with_a_tiny_model(tmp_path, tiny_model):
    env = {"NBFINETUNE_HOME": str(tmp_path / "home"), "NBFINETUNE_DEFAULT_MODEL": tiny_model, "HF_HUB_OFFLINE": "1"}
    notebook = execute("evaluate-and-compare.ipynb", env, tmp_path, timeout=600)
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert "best run:" in text_of(outputs_of(notebook, "best = "))
    table = text_of(outputs_of(notebook, "comparison.table"))
    assert "lr=0.0003" in table or "0.0003" in table
    assert "max_logit_difference" in text_of(outputs_of(notebook, "best_run.export()"))


def _runs_clean(notebook) -> None:
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


def test_sweep_notebook_executes_with_a_tiny_model(tmp_path, tiny_model):
    env = {"NBFINETUNE_HOME": str(tmp_path / "home"), "NBFINETUNE_DEFAULT_MODEL": tiny_model, "HF_HUB_OFFLINE": "1"}
    notebook = execute("sweep.ipynb", env, tmp_path, timeout=600)
    _runs_clean(notebook)
    assert "best run:" in text_of(outputs_of(notebook, "best = "))


def test_modal_notebook_skips_visibly_without_credentials(tmp_path, tiny_model):
    env = {"NBFINETUNE_HOME": str(tmp_path / "home"), "NBFINETUNE_DEFAULT_MODEL": tiny_model, "HF_HUB_OFFLINE": "1",
           "MODAL_TOKEN_ID": "", "MODAL_TOKEN_SECRET": "", "MODAL_CONFIG_PATH": str(tmp_path / "none.toml")}
    notebook = execute("modal.ipynb", env, tmp_path, timeout=300)
    _runs_clean(notebook)
    assert "Modal cells will be skipped" in text_of(outputs_of(notebook, "%load_ext"))
    assert "skipped (no Modal credentials)" in text_of(outputs_of(notebook, "if MODAL:\n    run = "))
    assert "prices of 2026-07-01" in text_of(outputs_of(notebook, "from nbfinetune.pricing"))


def test_should_we_fine_tune_executes_with_a_tiny_model(tmp_path, tiny_model):
    env = {"NBFINETUNE_HOME": str(tmp_path / "home"), "NBFINETUNE_DEFAULT_MODEL": tiny_model, "HF_HUB_OFFLINE": "1"}
    notebook = execute("should-we-fine-tune.ipynb", env, tmp_path, timeout=600)
    _runs_clean(notebook)
    shown = outputs_of(notebook, "results = nbft.evaluate")
    html = "".join(o.get("data", {}).get("text/html", "") for o in shown)
    assert "Worst examples" in html and "judge:" in html and "latency_p95_s" in html
    economics = "".join(o.get("data", {}).get("text/html", "") for o in outputs_of(notebook, "nbft.economics"))
    charts = [o.data for cell in ("results = nbft.evaluate", "nbft.economics") for o in outputs_of(notebook, cell)
              if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(charts) == 2 and all("<svg" in chart["image/svg+xml"] for chart in charts)  # the saved copy
    assert "break-even vs API model" in economics and "prices of" in economics and "fine-tuned" in html
    assert not re.search(r"nbft-[A-Za-z0-9_-]{40}", nbformat.writes(notebook))  # the server's key is not saved


def test_preference_and_rl_notebook_executes_with_a_tiny_model(tmp_path, tiny_model):
    env = {"NBFINETUNE_HOME": str(tmp_path / "home"), "NBFINETUNE_DEFAULT_MODEL": tiny_model, "HF_HUB_OFFLINE": "1"}
    notebook = execute("preference-and-rl.ipynb", env, tmp_path, timeout=600)
    _runs_clean(notebook)
    assert "reward margin: first step 0.000" in text_of(outputs_of(notebook, "summary = dpo.wait()"))
    assert "json_reward" in text_of(outputs_of(notebook, "nbft.try_rewards"))
    assert "mean reward per step:" in text_of(outputs_of(notebook, "summary = grpo.wait()"))

"""A newcomer's first hour, as one notebook executed in the suite: data in a folder beside the notebook named by
relative paths, a run cancelled and resumed, a finished run refused for resume, a second run, compare, chat
with a trailing question mark, export to a relative folder, the run list. (Issue 11's newcomer trial.)"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tests.helpers import execute_notebook

# The notebook tier: the newcomer's notebook executes in a kernel.
pytestmark = pytest.mark.notebook

CELLS = [
    "%load_ext nbfinetune",
    "%finetune check data/train.jsonl",
    # a checkpoint every 2 steps to resume from
    "run = %finetune --data data/train.jsonl --eval-data data/eval.jsonl --steps 8 --eval-every 4 --save-every 2 "
    "--eval-samples 2 --name first --no-dashboard",
    "import time\n"
    "while run.summary().step < 3 and run.status not in ('finished', 'failed'):\n"
    "    time.sleep(0.1)\n"
    "run.cancel()\n"
    "print('after cancel:', run.wait(timeout=300, progress=False).status)",
    "resumed = %finetune resume\n"
    "print('run id:', resumed.id)\n"
    "print('resumed the same run:', resumed.id == run.id)\n"
    "print('after resume:', resumed.wait(timeout=300, progress=False).status)",
    "try:\n"
    "    run.resume()\n"
    "except RuntimeError as exc:\n"
    "    print('refused:', exc)",
    "second = %finetune --data data/train.jsonl --steps 3 --lr 5e-3 --eval-samples 2 --name second --no-dashboard\n"
    "print('second:', second.wait(timeout=300, progress=False).status)",
    "%finetune compare {run.id} {second.id}",
    "answer = %chat --run {run.id} --max-tokens 8 Who are you?",
    "result = run.export('export/merged')\n"
    "print('exported to', result['path'])",
    "%finetune runs",
]


def _text(cell) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) +
                   str(o.get("data", {}).get("text/html", "")) for o in cell.outputs)


def _run_id(text: str) -> str:
    return re.search(r"run id: (\S+)", text).group(1)


def test_a_newcomers_notebook_with_relative_paths_runs_clean(tmp_path, tiny_model):
    from nbfinetune.data import sample_files

    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    train, evaluation = sample_files("people")
    shutil.copy(train, folder / "data" / "train.jsonl")
    shutil.copy(evaluation, folder / "data" / "eval.jsonl")
    notebook = new_notebook(cells=[new_code_cell(source) for source in CELLS])
    env = {"NBFINETUNE_HOME": str(tmp_path / "home"), "NBFINETUNE_DEFAULT_MODEL": tiny_model, "HF_HUB_OFFLINE": "1"}
    execute_notebook(notebook, folder, env, timeout=600)

    errors = [o for c in notebook.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    out = [_text(c) for c in notebook.cells]
    assert "480" in out[1]  # the pre-flight found the folder's rows
    assert "after cancel: cancelled" in out[3]
    assert "resumed the same run: True" in out[4] and "after resume: finished" in out[4]
    assert "refused:" in out[5] and "new run" in out[5]
    assert "second: finished" in out[6]
    assert "first" in out[7] and "second" in out[7]  # compare names the runs
    assert "Object `you` not found" not in out[8]
    assert (folder / "export" / "merged" / "config.json").exists()  # relative to the notebook's folder
    assert "first" in out[10] and "second" in out[10] and "finished" in out[10]
    stored = json.loads((tmp_path / "home" / "runs" / _run_id(out[4]) / "config.json").read_text())
    assert stored["data"]["path"] == str(folder / "data" / "train.jsonl")  # resolved where the notebook is

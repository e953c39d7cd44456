"""Relative paths a user types are resolved against their working directory, not the worker's (the
worker runs inside the run directory)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbfinetune import api
from nbfinetune.data.sources import sample_files


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: str) -> Path:
    """A user's folder: data/x.jsonl, data/eval.jsonl and models/tiny, with the cwd inside it."""
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    rows = Path(sample_files("people")[0]).read_text(encoding="utf-8").splitlines()
    (folder / "data" / "x.jsonl").write_text("\n".join(rows[:40]) + "\n", encoding="utf-8")
    (folder / "data" / "eval.jsonl").write_text("\n".join(rows[40:44]) + "\n", encoding="utf-8")
    (folder / "models").mkdir()
    shutil.copytree(tiny_model, folder / "models" / "tiny")
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.train
def test_magic_with_relative_data_model_and_eval_paths_trains(ip, home, project):
    run = ip.run_line_magic("finetune", "--model models/tiny --data data/x.jsonl --eval-data ./data/eval.jsonl "
                                        "--steps 2 --eval-samples 0 --no-dashboard")
    summary = run.wait(timeout=180, progress=False)
    assert summary.status == "finished", summary.error
    stored = run.config
    assert stored.data.path == str(project / "data" / "x.jsonl")
    assert stored.data.eval_path == str(project / "data" / "eval.jsonl")
    assert stored.model == str(project / "models" / "tiny")


def test_yaml_and_api_paths_are_made_absolute_and_hub_ids_left_alone(home, project):
    config = api.build_config("model: models/tiny\ndata: {path: data/x.jsonl}\n")
    assert (config.model, config.data.path) == (str(project / "models" / "tiny"), str(project / "data" / "x.jsonl"))
    config = api.build_config(model="org/name", data="sample:people", eval_data="~/e.jsonl")
    assert (config.model, config.data.path) == ("org/name", "sample:people")
    assert config.data.eval_path == os.path.expanduser("~/e.jsonl")
    assert api.build_config(data="user/hub-dataset").data.path == "user/hub-dataset"


@pytest.mark.train
def test_cli_train_with_relative_paths(home, project):
    out = subprocess.run([sys.executable, "-m", "nbfinetune.cli", "train", "--model", "models/tiny",
                          "--data", "data/x.jsonl", "--max-steps", "2", "--eval-samples", "0", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=project)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "finished"


@pytest.mark.train
def test_export_out_dir_is_relative_to_the_caller(home, project, monkeypatch):
    from nbfinetune.core import export

    seen = {}
    monkeypatch.setattr(export, "export_merged", lambda model, adapter, out, **_: seen.setdefault("out", out) and {})
    run = api.finetune(model="models/tiny", data="data/x.jsonl", steps=1, eval_samples=0, display=False)
    assert run.wait(timeout=180, progress=False).status == "finished"
    run.export("merged-here")
    assert Path(seen["out"]) == project / "merged-here"

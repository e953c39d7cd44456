"""The command line matches the magic, and its errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbfinetune.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.train
def test_train_takes_the_magics_flags_and_free_form_data_headlines_eval_loss(home, tiny_model, tmp_path):
    rows = [{"prompt": f"Tell me about the number {i}", "completion": f"It is {i}, a fine number."} for i in range(24)]
    data = tmp_path / "free.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = _cli("train", "--model", tiny_model, "--data", str(data), "--format", "prompt_completion", "--steps", "2",
               "--eval-every", "1", "--eval-samples", "2", "--seed", "3", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "finished" and result["eval_loss"] is not None
    assert result["metrics"] == {}  # no exact_match headline on free-form answers
    from nbfinetune import api

    run = api.attach(result["run_id"], display=False)
    config = run.config
    assert (config.train.max_steps, config.eval.every, config.data.format, config.train.seed) == (2, 1, "prompt_completion", 3)
    evals = [e for e in run.events() if e.type == "eval"]
    assert len(evals) >= 2 and evals[-1]["samples"]  # the answers are still there to read
    assert run.summary().describe().split(" · ")[2].startswith("loss")
    assert _cli("train", "--max-steps", "x").returncode == 2  # the old spelling still parses


def test_export_of_a_failed_run_is_one_line(home):
    from nbfinetune import api
    from nbfinetune.runs import RunStore
    from tests.helpers import synthetic_run

    run = api.Run(synthetic_run(RunStore(), steps=0, end="failed"))  # failed before training: no adapter
    assert run.summary().status == "failed"
    out = _cli("export", run.id)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"nbfinetune export: error: run {run.id} has no adapter yet (status: failed)"


def test_validate_of_a_missing_file_fails_before_loading_a_model(tmp_path):
    out = _cli("validate", str(tmp_path / "missing.jsonl"), "--model", "/no/such/model")
    assert out.returncode == 2
    assert out.stderr.strip() == f"nbfinetune validate: error: data file not found: {tmp_path / 'missing.jsonl'}"

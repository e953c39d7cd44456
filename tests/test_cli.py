import json
import subprocess
import sys

import pytest


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nbfinetune.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
    out = _cli("--help")
    assert out.returncode == 0 and "train" in out.stdout and "runs" in out.stdout


@pytest.mark.train
def test_train_json_then_runs(home, tiny_model):
    out = _cli("train", "--model", tiny_model, "--max-steps", "6", "--eval-samples", "2", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"run_id", "adapter_path", "first_loss", "last_loss"} <= set(result)
    assert result["last_loss"] < result["first_loss"]
    listing = _cli("runs", "--json")
    assert [r["run_id"] for r in json.loads(listing.stdout)] == [result["run_id"]]


def test_bad_arguments_give_one_line_errors(home):
    out = _cli("train", "--model", "/nowhere", "--lr", "-1")
    assert out.returncode == 2 and "train.lr must be a number" in out.stderr and "Traceback" not in out.stderr

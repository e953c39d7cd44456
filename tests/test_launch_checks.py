"""Errors a user can fix are answered at launch, in the kernel, not by a failed run in the worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import nbfinetune as nbft
from nbfinetune import api
from nbfinetune.runs import RunStore

INSTRUCTION_ROWS = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(30)]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "instr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTION_ROWS), encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "blank.jsonl").write_text("\n\n", encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n{"oops": 1\n', encoding="utf-8")
    (tmp_path / "not-a-model").mkdir()
    return tmp_path


def _no_runs() -> bool:
    return RunStore().list() == []


@pytest.mark.parametrize("flags, message", [
    ("--model /nope/model", "model '/nope/model': no such directory"),
    ("--model {tmp}/not-a-model", "cannot read config.json"),
    ("--format chat --data {tmp}/instr.jsonl", "format 'chat' needs the field(s) messages, but the rows have "
                                                "input, instruction, output; they look like the 'instruction' format"),
    ("--data {tmp}/empty.jsonl", "the data is empty"),
    ("--data {tmp}/blank.jsonl", "the data is empty"),
    ("--data {tmp}/bad.jsonl", "no usable rows"),
    ("--data {tmp}/missing.jsonl", "data file not found"),
    ("--eval-data {tmp}/empty.jsonl", "empty.jsonl: no rows"),
])
def test_magic_refuses_at_launch_with_one_line(ip, home, files, tiny_model, flags, message):
    line = f"--model {tiny_model} " + flags.format(tmp=files) + " --no-dashboard"
    with pytest.raises(UsageError) as error:
        ip.run_line_magic("finetune", line)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert _no_runs()


def test_api_raises_a_value_error_and_launches_nothing(home, files, tiny_model):
    with pytest.raises(ValueError, match="the data is empty"):
        api.finetune(model=tiny_model, data=str(files / "empty.jsonl"), display=False)
    with pytest.raises(ValueError, match="lora.target_modules: 'nope' not in the model"):
        api.finetune(model=tiny_model, target_modules=["q_proj", "nope"], display=False)
    assert _no_runs()


def test_cli_train_exits_2_with_one_line(home, files, tiny_model):
    out = subprocess.run([sys.executable, "-m", "nbfinetune.cli", "train", "--model", tiny_model, "--data",
                          str(files / "empty.jsonl")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "the data is empty" in out.stderr


def test_validate_says_so_for_empty_data_and_a_wrong_format_once(files):
    from nbfinetune.cli import main

    for name, fmt, message in (("empty.jsonl", "auto", "the data is empty"),
                               ("instr.jsonl", "chat", "they look like the 'instruction' format")):
        out = subprocess.run([sys.executable, "-m", "nbfinetune.cli", "validate", str(files / name), "--format", fmt,
                              "--model", "none"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and message in out.stderr and out.stderr.strip().count("\n") == 0
        assert "No problems" not in out.stdout + out.stderr
    assert main(["validate", str(files / "instr.jsonl"), "--model", "none"]) == 0


def test_sweep_refuses_before_its_first_run(home, files, tiny_model):
    with pytest.raises(ValueError, match="the data is empty"):
        nbft.sweep({"lr": [1e-3, 2e-3]}, model=tiny_model, data=str(files / "empty.jsonl"), steps=1)
    assert _no_runs()


def test_preflight_of_an_empty_file_does_not_say_no_problems(home, files, tiny_model):
    from nbfinetune.widgets.preflight import Preflight

    view = Preflight(str(files / "empty.jsonl"), model=tiny_model, namespace={})
    assert "the data is empty" in view.status.value
    assert "No problems found" not in view.problems.value + view.summary.value

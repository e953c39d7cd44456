"""Magics in a real InteractiveShell: thin parsing, one-line errors, the Python API underneath."""

from pathlib import Path
from unittest.mock import patch

import pytest
from IPython.display import display
from IPython.utils.capture import capture_output
from IPython.core.error import UsageError

from nbfinetune import api
from nbfinetune.magics import FinetuneMagics


def test_flags_map_to_the_python_api(ip, home):
    with patch.object(api, "finetune", return_value="RUN") as launch:
        result = ip.run_line_magic("finetune", "--data my.jsonl --steps 5 --lr 2e-4 --r 8 --batch-size 4 --no-dashboard")
    assert result == "RUN"
    kwargs = launch.call_args.kwargs
    assert kwargs["display"] is False
    assert {k: kwargs[k] for k in ("data", "steps", "lr", "r", "batch_size")} == \
        {"data": "my.jsonl", "steps": 5, "lr": 2e-4, "r": 8, "batch_size": 4}
    config = api.build_config(launch.call_args.args[0], **{k: v for k, v in kwargs.items() if k != "display"})
    assert (config.backend, config.data.path, config.train.max_steps) == ("local", str(Path.cwd() / "my.jsonl"), 5)
    with patch.object(api, "finetune", return_value="RUN") as launch:
        ip.run_line_magic("finetune", "--eval-every 5 --early-stopping 3 --early-stopping-metric json_match --no-dashboard")
    kwargs = {k: v for k, v in launch.call_args.kwargs.items() if k != "display"}
    config = api.build_config(launch.call_args.args[0], **kwargs)
    assert (config.eval.every, config.eval.early_stopping, config.eval.early_stopping_metric) == (5, 3, "json_match")


def test_defaults_come_from_config(ip, home):
    magics = ip.magics_manager.registry["FinetuneMagics"]
    magics.default_model = "/models/mine"
    try:
        with patch.object(api, "finetune", return_value=None) as launch:
            ip.run_line_magic("finetune", "--steps 1")
        base = launch.call_args.args[0]
        assert base["model"] == "/models/mine" and base["data"]["path"] == "sample:people"
    finally:
        magics.default_model = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("line, message", [
    ("--steps many", "argument --steps: invalid int value: 'many'"),
    ("--bogus 1", "unrecognized arguments: --bogus 1"),
    ("--lr -5 --model x", "train.lr must be a number"),
    ("attach no-such-run", "no run 'no-such-run'"),
    ('--name "unclosed', "cannot parse arguments"),
])
def test_bad_input_is_a_one_line_usage_error(ip, home, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("finetune", line)


def test_help_and_runs(ip, home, capsys):
    ip.run_line_magic("finetune", "--help")
    assert "--steps" in capsys.readouterr().out
    assert repr(ip.run_line_magic("finetune", "runs")) == "no runs yet"


@pytest.mark.train
def test_end_to_end_train_then_chat_streams(ip, home, tiny_model, capsys):
    run = ip.run_line_magic("finetune", f"--model {tiny_model} --steps 4 --eval-samples 0 --no-dashboard")
    assert run.wait(timeout=120, progress=False).status == "finished"
    capsys.readouterr()
    answer = ip.run_line_magic("chat", "--max-tokens 8 Extract: Ada, 36, Turin")
    printed = capsys.readouterr().out
    assert isinstance(answer, str) and answer.strip() in printed
    assert ip.run_line_magic("finetune", "runs").runs[0].run_id == run.id


def test_yaml_cell_magic_with_flag_overrides(ip, home):
    with patch.object(api, "finetune", return_value="RUN") as launch:
        ip.run_cell_magic("finetune", "--steps 7 --no-dashboard", "model: m\ntrain:\n  lr: 0.002\n  max_steps: 99\n")
    base = launch.call_args.args[0]
    config = api.build_config(base, **{k: v for k, v in launch.call_args.kwargs.items() if k != "display"})
    assert (config.model, config.train.lr, config.train.max_steps, config.data.path) == ("m", 0.002, 7, "sample:people")
    with pytest.raises(UsageError, match="not valid YAML"):
        ip.run_cell_magic("finetune", "", "train: [unclosed")
    with pytest.raises(UsageError, match="unknown setting 'train.learnrate'"):
        ip.run_cell_magic("finetune", "--no-dashboard", "train:\n  learnrate: 1\n")


def test_compare_two_runs(ip, home):
    from nbfinetune.config import RunConfig
    from nbfinetune.runs import RunStore
    from tests.helpers import synthetic_run

    store = RunStore()
    runs = [api.Run(synthetic_run(store, RunConfig.from_dict({"name": n, "train": {"max_steps": s}}), steps=s,
                                  evals=(0, s)), store)
            for s, n in ((2, "short"), (3, None))]
    for run in runs:
        assert run.summary().status == "finished"
    comparison = ip.run_line_magic("finetune", f"compare {runs[0].id} {runs[1].id}")
    assert list(comparison.table.index) == [r.id for r in runs]
    assert list(comparison.table["steps"]) == [2, 3] and "base json_match" in comparison.table.columns
    assert len(comparison.figure.data) == 4 and list(comparison.figure.data[2].x) == [1, 2, 3]
    # The legend names runs by name, falling back to the id.
    assert [t.name for t in comparison.figure.data[::2]] == ["short train (smoothed)", f"{runs[1].id} train (smoothed)"]
    # In JupyterLab the chart and the table are two outputs: Lab shows one mimetype per output.
    with capture_output() as shown:
        display(comparison)
    kinds = [set(out.data) for out in shown.outputs]
    assert any("application/vnd.plotly.v1+json" in k for k in kinds)
    assert any("text/html" in k and "application/vnd.plotly.v1+json" not in k for k in kinds)
    assert "<table" in comparison._repr_mimebundle_()["text/html"]


@pytest.mark.train
def test_terminal_shell_shows_text_progress_and_a_summary(ip, home, tiny_model, capsys):
    """No widgets in a terminal IPython: the magic still works and prints progress and a summary."""
    run = ip.run_line_magic("finetune", f"--model {tiny_model} --steps 3 --eval-samples 0")
    out = capsys.readouterr()
    assert run.status == "finished"
    assert f"run {run.id} started" in out.out and "finished · step 3/3" in out.out
    assert "3/3" in out.err  # the tqdm bar

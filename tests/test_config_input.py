"""Settings a user types are checked before launch, naming the field; YAML reads numbers as people write them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from IPython.core.error import UsageError

from nbfinetune import api
from nbfinetune.config import ConfigError, RunConfig


@pytest.mark.train
def test_yaml_exponent_numbers_are_numbers(ip, home, tiny_model, tmp_path):
    assert RunConfig.from_yaml("train: {lr: 2e-4}\n").train.lr == 2e-4
    assert RunConfig.from_yaml("train:\n  lr: 1E-3\n  weight_decay: 1e2\n").train.weight_decay == 100.0
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        RunConfig.from_yaml("train: {lr: '2e-4'}\n")  # quoted: the user asked for text
    from unittest.mock import patch

    with patch.object(api, "finetune", return_value="RUN") as launch:
        ip.run_cell_magic("finetune", "--no-dashboard", "train: {lr: 2e-4}\n")
    assert api.build_config(launch.call_args.args[0]).train.lr == 2e-4
    (tmp_path / "c.yaml").write_text(f"model: {tiny_model}\ntrain: {{lr: 2e-4, max_steps: 1}}\neval: {{samples: 0}}\n")
    out = subprocess.run([sys.executable, "-m", "nbfinetune.cli", "train", "--config", str(tmp_path / "c.yaml"),
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]


def test_runs_works_after_the_runs_submodule_is_imported(home):
    import nbfinetune as nbft
    import nbfinetune.runs  # noqa: F401 — what attach() and the server do

    assert len(nbft.runs()) == 0
    assert nbft.runs.RunStore is nbfinetune.runs.RunStore  # still the module for those who import it
    from nbfinetune import runs

    assert repr(runs()) == "no runs yet"


@pytest.mark.parametrize("settings, field", [
    ({"epochs": float("inf")}, "train.epochs"),
    ({"epochs": float("nan")}, "train.epochs"),
    ({"seed": 2**70}, "train.seed"),
    ({"seed": -1}, "train.seed"),
    ({"metrics": ["nope"]}, "eval.metrics"),
    ({"metrics": [{"a": 1}]}, "eval.metrics"),
    ({"early_stopping_metric": "bogus"}, "eval.early_stopping_metric"),
    ({"batch_size": 10**6}, "train.batch_size"),
    ({"dropout": 1.0}, "lora.dropout"),
    ({"name": {"a": 1}}, "name must be text"),
    ({"name": 7}, "name must be text"),
    ({"target_modules": [""]}, "lora.target_modules"),
    ({"lr": float("inf")}, "train.lr"),
])
def test_bad_values_are_refused_naming_the_field(home, settings, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        api.build_config(**settings)


def test_yaml_errors_name_the_line_and_deep_nesting_is_one_error(ip, home):
    with pytest.raises(ConfigError, match="at line 3, column 8: mapping values are not allowed here"):
        RunConfig.from_yaml("model: m\ntrain:\n  lr: 1: 2\n")
    with pytest.raises(UsageError, match="the cell is not valid YAML at line 2"):
        ip.run_cell_magic("finetune", "--no-dashboard", "model: m\n  data: x: y\n")
    deep = "train: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(ConfigError, match="nested too deeply"):
        RunConfig.from_yaml(deep)
    with pytest.raises(UsageError, match="nested too deeply"):
        ip.run_cell_magic("finetune", "--no-dashboard", deep)
    deep_map = "".join("  " * i + f"k{i}:\n" for i in range(5000))
    with pytest.raises(ConfigError, match="nested too deeply"):
        RunConfig.from_yaml(deep_map)


def test_target_modules_checked_against_the_model(home, tiny_model):
    from nbfinetune.launch_checks import check_before_launch

    check_before_launch(api.build_config(model=tiny_model, target_modules=["q_proj", "self_attn.v_proj"]))
    with pytest.raises(ConfigError, match="lora.target_modules: 'nope' not in the model; its modules include"):
        check_before_launch(api.build_config(model=tiny_model, target_modules=["nope"]))

"""One settings table: the magic, the CLI, build_config and the launcher take exactly its settings."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from nbfinetune.config import ConfigError, RunConfig
from nbfinetune.settings import BY_NAME, CLI, FLAT_KEYS, MAGIC, SETTINGS, build_config


def _flags(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """dest -> option strings of a parser's optional arguments."""
    return {a.dest: set(a.option_strings) for a in parser._actions if a.option_strings}


def _cli_train() -> argparse.ArgumentParser:
    from nbfinetune.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _expected(surface: str) -> dict[str, set[str]]:
    return {s.name: set(s.options(surface)) for s in SETTINGS if surface in s.flags}


def test_the_magic_takes_exactly_the_tables_flags():
    from nbfinetune.magics import train_parser

    flags = _flags(train_parser())
    own = {"dashboard", "background", "help"}  # how the magic shows the run, not settings
    assert {k: v for k, v in flags.items() if k not in own} == _expected(MAGIC)


def test_the_cli_takes_exactly_the_tables_flags_and_the_magics_help():
    from nbfinetune.magics import train_parser

    flags = _flags(_cli_train())
    own = {"help", "config", "json"}
    assert {k: v for k, v in flags.items() if k not in own} == _expected(CLI)
    # The CLI trains locally: every flag of the magic but the Modal ones, with the same help and choices.
    assert set(_expected(MAGIC)) - set(_expected(CLI)) == {"backend", "gpu", "budget"}
    magic = {a.dest: a for a in train_parser()._actions}
    for action in _cli_train()._actions:
        if action.dest in BY_NAME and action.dest != "model":  # model's help names each one's default
            twin = magic[action.dest]
            assert (action.help, action.choices, action.type) == (twin.help, twin.choices, twin.type)
    assert _cli_train().parse_args(["--max-steps", "3"]).steps == 3  # the old spelling is an alias


def test_build_config_takes_exactly_the_tables_names_and_aliases():
    assert set(FLAT_KEYS) == {key for s in SETTINGS for key in (s.name, *s.aliases)}
    fields = {f"{section}.{f.name}" if section else f.name
              for section, cls in (("", RunConfig), ("data", None), ("lora", None), ("train", None), ("eval", None))
              for f in dataclasses.fields(cls or type(getattr(RunConfig(), section)))}
    assert set(FLAT_KEYS.values()) <= fields  # every row sets a real field
    values = {"steps": 3, "max_steps": 3, "epochs": 1.5, "lr": 1e-4, "batch_size": 4, "grad_accum": 2, "seed": 1,
              "r": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": ["q_proj"], "max_seq_len": 64,
              "columns": {"prompt": "q"}, "on_bad_rows": "strict", "train_on": "all", "eval_data": "e.jsonl",
              "format": "chat", "eval_every": 2, "eval_samples": 5, "metrics": ["json_match"], "save_every": 2,
              "precision": "fp32", "quantization": "nf4", "schedule": "cosine", "warmup_steps": 1,
              "data": "d.jsonl", "model": "m", "backend": "modal", "name": "n", "gpu": "H100", "budget": 2.0,
              "budget_usd": 2.0, "processes": 2, "early_stopping": 2, "early_stopping_metric": "json_match",
              "method": "dpo", "dpo_beta": 0.2, "generations": 3, "rewards": "mod:fn"}
    assert set(values) == set(FLAT_KEYS)  # this test sets every key of the table
    config = build_config(**values).to_dict()
    for key, value in values.items():
        section, _, field = FLAT_KEYS[key].rpartition(".")
        stored = (config[section] if section else config)[field]
        expected = ["mod:fn"] if key == "rewards" else value
        assert stored == expected or key in ("data", "eval_data"), key  # data paths are made absolute
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        build_config(learning_rate=1e-4)


def test_the_launchers_fields_are_settings(home, tiny_model):
    from nbfinetune.widgets.launcher import SETTING_FIELDS, Launcher

    launcher = Launcher(build_config(model=tiny_model))
    assert set(SETTING_FIELDS) <= set(BY_NAME)
    assert launcher.steps.tooltip == BY_NAME["steps"].help
    config = launcher.config()
    assert (config.eval.every, config.eval.early_stopping, config.budget_usd, config.name) == (None, None, None, None)

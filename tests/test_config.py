import os
import pytest

from nbfinetune.api import build_config
from nbfinetune.config import DEFAULT_MODEL, ConfigError, RunConfig


def test_defaults_are_valid_and_round_trip():
    config = RunConfig()
    config.validate()
    assert RunConfig.from_dict(config.to_dict()) == config


def test_default_model_env(monkeypatch):
    monkeypatch.delenv("NBFINETUNE_DEFAULT_MODEL", raising=False)
    assert RunConfig().model == DEFAULT_MODEL
    monkeypatch.setenv("NBFINETUNE_DEFAULT_MODEL", "/models/tiny")
    assert RunConfig().model == "/models/tiny"


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown setting 'train.learning_rat'.*"):
        RunConfig.from_dict({"train": {"learning_rat": 1}})
    with pytest.raises(ConfigError, match=r"did you mean 'lora'"):
        RunConfig.from_dict({"loar": {}})


@pytest.mark.parametrize("values, message", [
    ({"train": {"lr": -1}}, "train.lr must be a number > 0.0"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be a positive integer, got 0"),
    ({"lora": {"r": "8"}}, "lora.r must be a positive integer"),
    ({"data": {"format": "alpaca"}}, "data.format must be one of auto, chat, sharegpt"),
    ({"train": {"max_steps": None}}, "set train.max_steps or train.epochs"),
    ({"backend": "ssh"}, "backend must be one of local, modal"),
    ({"eval": {"early_stopping": 2}}, "eval.early_stopping needs eval.every"),
    ({"eval": {"every": 5, "early_stopping": 2, "early_stopping_metric": "json_match", "generate": False}},
     "'json_match' is a generation metric: it needs eval.generate"),
    ({"eval": {"every": 5, "early_stopping": 2, "early_stopping_metric": "contains", "metrics": ["json_match"]}},
     "'contains' is not among eval.metrics"),
])
def test_validation_messages_name_the_field(values, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(values)
    assert message in str(info.value)


def test_yaml_and_flat_overrides():
    config = build_config("model: m\ntrain:\n  lr: 0.01\n", steps=5, r=4, data="x.jsonl")
    assert (config.model, config.train.lr, config.train.max_steps, config.lora.r, config.data.path) == \
        ("m", 0.01, 5, 4, os.path.join(os.getcwd(), "x.jsonl"))
    assert build_config(epochs=2).train.max_steps is None
    with pytest.raises(ConfigError, match="must be a mapping"):
        RunConfig.from_yaml("- a\n- b\n")

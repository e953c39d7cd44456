"""Run configuration: typed dataclasses, validation with precise messages, dict/YAML round-trip.

Stdlib only: this module is imported by the notebook, the CLI and the worker alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, overload

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SAMPLE_DATA = "sample:people"
FORMATS = ("auto", "chat", "sharegpt", "instruction", "prompt_completion", "text")
# Data files by suffix -> how they are read (data/sources.py); also what makes a name a local path.
DATA_FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                   ".parquet": "parquet"}
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("local", "modal")
METHODS = ("sft", "dpo", "grpo")
MAX_BATCH_SIZE = 4096


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # "all-linear" is peft's shorthand for every linear layer except the output head.
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainSettings:
    max_steps: int | None = 40
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    schedule: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "auto"
    # "nf4": QLoRA — the frozen base model in 4-bit NF4 (bitsandbytes), LoRA weights in fp32.
    quantization: str | None = None
    gradient_checkpointing: bool = False
    save_every: int | None = None
    # "auto": the shared-prefix layout where every layer is full causal attention, else padded rows
    # (see core/batching.py).
    batch_layout: str = "auto"
    # Data-parallel processes (torch.distributed): one per GPU; on Modal, set from gpu="TYPE:N".
    processes: int = 1
    # "sft": next-token loss on answers; "dpo": preference pairs (prompt/chosen/rejected) against the base
    # as reference (core/methods.py).
    method: str = "sft"
    # DPO: strength of the pull toward the reference (TRL's and the paper's beta).
    dpo_beta: float = 0.1
    # GRPO: reward functions as 'module:function' references, and notebook functions sent by value
    # (name -> base64 cloudpickle; see rewards.py); completions per prompt, their length and temperature,
    # KL coefficient to the base, and the clipping range of the policy ratio.
    rewards: list[str] | None = None
    reward_code: dict[str, str] | None = None
    grpo_generations: int = 4
    grpo_max_new_tokens: int = 64
    grpo_temperature: float = 1.0
    grpo_beta: float = 0.04
    grpo_epsilon: float = 0.2


@dataclass
class DataSettings:
    path: str = SAMPLE_DATA
    eval_path: str | None = None
    format: str = "auto"
    eval_fraction: float = 0.1
    max_seq_len: int = 512
    # "completions": loss on assistant turns only; "all": loss on every token.
    train_on: str = "completions"
    # Our field name -> the file's, for odd schemas: {"prompt": "question", "completion": "answer"}.
    columns: dict[str, str] | None = None
    # "skip": bad rows are reported and left out; "strict": any bad row stops the run before training.
    on_bad_rows: str = "skip"


@dataclass
class EvalSettings:
    every: int | None = None
    # None picks metrics from the references: json_match/json_valid when they are JSON, else none (eval loss).
    metrics: list[str] | None = None
    samples: int = 24
    max_new_tokens: int = 64
    generate: bool = True
    # Stop after this many evaluations in a row that do not improve early_stopping_metric by more than
    # early_stopping_min_delta; the run's adapter is then the best evaluated one. Needs `every`.
    early_stopping: int | None = None
    # "eval_loss" (lower is better) or a generation metric such as "json_match" (higher is better).
    early_stopping_metric: str = "eval_loss"
    early_stopping_min_delta: float = 0.0


def default_model() -> str:
    """$NBFINETUNE_DEFAULT_MODEL when set (e.g. a tiny model for smoke tests), else the demo model."""
    return os.environ.get("NBFINETUNE_DEFAULT_MODEL") or DEFAULT_MODEL


@dataclass
class RunConfig:
    model: str = field(default_factory=default_model)
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    backend: str = "local"
    # Modal only: GPU type ("A10", "H100", "H100:2", ...) and an optional spending cap in USD.
    gpu: str = "A10"
    budget_usd: float | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        config = _build(cls, values, prefix="")
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, text: str) -> RunConfig:
        values = load_yaml(text) or {}
        if not isinstance(values, dict):
            raise ConfigError("the YAML config must be a mapping of settings, e.g. 'model: ...'")
        return cls.from_dict(values)

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """Apply dotted-key overrides such as {"train.lr": 1e-4, "model": "..."}."""
        merged = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.rpartition(".")
            target = merged[section] if section else merged
            if section and section not in merged:
                raise ConfigError(f"unknown setting '{dotted}'")
            target[key] = value
        return RunConfig.from_dict(merged)

    def validate(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError("; ".join(problems))


def load_yaml(text: str) -> Any:
    """YAML with numbers as YAML 1.2 reads them (PyYAML's 1.1 rules read `2e-4` as a string); a syntax
    error names its line, and absurd nesting is one ConfigError, not a RecursionError."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"the config is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError("the YAML config is nested too deeply to be a settings mapping") from None


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        name = prefix.rstrip(".") or "config"
        raise ConfigError(f"'{name}' must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            hint = difflib.get_close_matches(key, list(known), n=1)
            suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"
            raise ConfigError(f"unknown setting '{prefix}{key}'{suggestion}")
        nested = _NESTED.get(key) if cls is RunConfig else None
        kwargs[key] = _build(nested, value, f"{key}.") if nested else value
    return cls(**kwargs)


_NESTED = {"data": DataSettings, "lora": LoraSettings, "train": TrainSettings, "eval": EvalSettings}


def _problems(config: RunConfig) -> list[str]:
    out: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            out.append(message)

    def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
              f"{name} must be a positive integer, got {value!r}")

    def number(name: str, value: Any, low: float, high: float | None = None, low_open: bool = False,
               high_open: bool = False) -> None:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        valid = valid and (value > low if low_open else value >= low)
        valid = valid and (high is None or (value < high if high_open else value <= high))
        bounds = f"{'>' if low_open else '>='} {low}" + (
            f" and {'<' if high_open else '<='} {high}" if high is not None else "")
        check(valid, f"{name} must be a number {bounds}, got {value!r}")

    def choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
        check(value in allowed, f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    check(isinstance(config.model, str) and config.model.strip() != "",
          "model must be a hub id or a local path")
    check(isinstance(config.data.path, str) and config.data.path.strip() != "",
          "data.path must be a file, a directory, a hub id or 'sample:people'")
    choice("data.format", config.data.format, FORMATS)
    choice("data.train_on", config.data.train_on, ("completions", "all"))
    choice("data.on_bad_rows", config.data.on_bad_rows, ("skip", "strict"))
    columns = config.data.columns
    check(columns is None or (isinstance(columns, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                                for k, v in columns.items())),
          "data.columns must map our field names to yours, "
          "e.g. {'prompt': 'question', 'completion': 'answer'}")
    number("data.eval_fraction", config.data.eval_fraction, 0.0, 0.5)
    positive_int("data.max_seq_len", config.data.max_seq_len)
    positive_int("lora.r", config.lora.r)
    number("lora.alpha", config.lora.alpha, 0.0, low_open=True)
    number("lora.dropout", config.lora.dropout, 0.0, 1.0, high_open=True)  # 1.0 would drop every input
    targets = config.lora.target_modules
    check((isinstance(targets, str) and targets.strip() != "")
          or (isinstance(targets, list) and bool(targets)
              and all(isinstance(t, str) and t.strip() for t in targets)),
          "lora.target_modules must be 'all-linear' or a list of module names "
          "such as ['q_proj', 'v_proj']")
    t = config.train
    positive_int("train.max_steps", t.max_steps, allow_none=True)
    if t.epochs is not None:
        number("train.epochs", t.epochs, 0.0, low_open=True)
    check(t.max_steps is not None or t.epochs is not None, "set train.max_steps or train.epochs")
    positive_int("train.batch_size", t.batch_size)
    check(not isinstance(t.batch_size, int) or t.batch_size <= MAX_BATCH_SIZE,
          f"train.batch_size must be at most {MAX_BATCH_SIZE} (use grad_accum for larger batches), "
          f"got {t.batch_size!r}")
    positive_int("train.grad_accum", t.grad_accum)
    number("train.lr", t.lr, 0.0, 1.0, low_open=True)
    choice("train.schedule", t.schedule, SCHEDULES)
    check(isinstance(t.warmup_steps, int) and t.warmup_steps >= 0,
          f"train.warmup_steps must be >= 0, got {t.warmup_steps!r}")
    number("train.weight_decay", t.weight_decay, 0.0)
    number("train.max_grad_norm", t.max_grad_norm, 0.0)
    check(isinstance(t.seed, int) and not isinstance(t.seed, bool) and 0 <= t.seed < 2**32,
          f"train.seed must be an integer from 0 to 2**32 - 1, got {t.seed!r}")
    choice("train.precision", t.precision, PRECISIONS)
    check(t.quantization in (None, "nf4"),
          f"train.quantization must be 'nf4' or None, got {t.quantization!r}")
    positive_int("train.save_every", t.save_every, allow_none=True)
    choice("train.batch_layout", t.batch_layout, ("auto", "shared", "packed", "padded"))
    positive_int("train.processes", t.processes)
    choice("train.method", t.method, METHODS)
    number("train.dpo_beta", t.dpo_beta, 0.0, low_open=True)
    check(t.rewards is None or (isinstance(t.rewards, list) and all(
        isinstance(r, str) and r.count(":") == 1 and all(part.strip() for part in r.split(":"))
        for r in t.rewards)),
        f"train.rewards must be a list of 'module:function' references, got {t.rewards!r}")
    check(t.reward_code is None or (isinstance(t.reward_code, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in t.reward_code.items())),
        "train.reward_code must map reward names to serialized functions "
        "(pass the functions as rewards=[...])")
    if t.method == "grpo":
        check(bool(t.rewards) or bool(t.reward_code),
              "train.method 'grpo' needs at least one reward: rewards=['module:function'] "
              "or a notebook function")
        positive_int("train.grpo_generations", t.grpo_generations)
        check(not isinstance(t.grpo_generations, int) or t.grpo_generations >= 2,
              "train.grpo_generations must be at least 2 (advantages compare completions of one prompt), "
              f"got {t.grpo_generations!r}")
        positive_int("train.grpo_max_new_tokens", t.grpo_max_new_tokens)
        number("train.grpo_temperature", t.grpo_temperature, 0.0, low_open=True)
        number("train.grpo_beta", t.grpo_beta, 0.0)
        number("train.grpo_epsilon", t.grpo_epsilon, 0.0, 1.0, low_open=True)
    if isinstance(t.processes, int) and isinstance(t.batch_size, int) and t.processes > t.batch_size:
        out.append(f"train.batch_size ({t.batch_size}) must be at least train.processes ({t.processes})")
    positive_int("eval.every", config.eval.every, allow_none=True)
    check(isinstance(config.eval.samples, int) and config.eval.samples >= 0,
          f"eval.samples must be >= 0, got {config.eval.samples!r}")
    positive_int("eval.max_new_tokens", config.eval.max_new_tokens)
    e = config.eval
    positive_int("eval.early_stopping", e.early_stopping, allow_none=True)
    number("eval.early_stopping_min_delta", e.early_stopping_min_delta, 0.0)
    if e.early_stopping is not None:
        check(e.every is not None,
              "eval.early_stopping needs eval.every: it counts evaluations without improvement")
        check(isinstance(e.early_stopping_metric, str) and bool(e.early_stopping_metric),
              "eval.early_stopping_metric must be 'eval_loss' or a metric name such as 'json_match'")
        if e.early_stopping_metric != "eval_loss":
            check(e.generate and e.samples > 0,
                  f"eval.early_stopping_metric {e.early_stopping_metric!r} is a generation metric: it needs "
                  "eval.generate and eval.samples > 0 (or use 'eval_loss')")
            check(e.metrics is None or e.early_stopping_metric in e.metrics,
                  f"eval.early_stopping_metric {e.early_stopping_metric!r} "
                  f"is not among eval.metrics {e.metrics}")
    metrics = config.eval.metrics
    from .metrics import NAMES as METRIC_NAMES  # stdlib only

    def known_metric(name: Any) -> bool:
        if not isinstance(name, str):
            return False
        module, _, function = name.partition(":")
        return name in METRIC_NAMES or (module.replace(".", "").replace("_", "").isalnum()
                                   and function.replace("_", "").isalnum())

    check(metrics is None or (isinstance(metrics, list) and all(known_metric(m) for m in metrics)),
          f"eval.metrics must be a list of metric names ({', '.join(METRIC_NAMES)}) "
          f"or 'module:function' references, got {metrics!r}")
    check(e.early_stopping_metric == "eval_loss" or known_metric(e.early_stopping_metric),
          "eval.early_stopping_metric must be 'eval_loss' or a metric "
          f"({', '.join(METRIC_NAMES)}, 'module:function'), got {e.early_stopping_metric!r}")
    check(config.name is None or (isinstance(config.name, str) and len(config.name) <= 200),
          "name must be text (at most 200 characters), got "
          + (f"{len(config.name)} characters" if isinstance(config.name, str)
             else type(config.name).__name__))
    choice("backend", config.backend, BACKENDS)
    from .pricing import UnknownGPU, parse_gpu

    try:
        if isinstance(config.gpu, str):
            parse_gpu(config.gpu)
        else:
            out.append("gpu must be text like 'H100' or 'H100:2'")
    except UnknownGPU as exc:
        out.append(str(exc))
    if config.budget_usd is not None:
        number("budget_usd", config.budget_usd, 0.0, low_open=True)
    return out


_DATA_SUFFIXES = tuple(DATA_FILE_KINDS)


def absolute_paths(config: RunConfig, cwd: str | None = None) -> RunConfig:
    """The config with every local path (data, eval data, model directory) made absolute against the
    caller's working directory: the worker runs in the run directory, so a relative path would miss.
    Hub ids and 'sample:NAME' stay as they are."""
    base = cwd or os.getcwd()
    config = dataclasses.replace(config, data=dataclasses.replace(config.data))
    config.data.path = _absolute_data(config.data.path, base)
    config.data.eval_path = _absolute_data(config.data.eval_path, base)
    if isinstance(config.model, str) and is_local_path(config.model, base, dir_only=True):
        config.model = _absolute(config.model, base)
    return config


def _absolute(path: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def is_local_path(path: str, base: str, dir_only: bool = False) -> bool:
    """Whether a path names something on this machine rather than a hub id: it exists here, or is
    spelled like a path (./x, ../x, /x, ~/x, or a data file's suffix)."""
    expanded = os.path.join(base, os.path.expanduser(path))
    exists = os.path.isdir(expanded) if dir_only else os.path.exists(expanded)
    return (exists or path.startswith((".", "/", "~"))
            or (not dir_only and path.lower().endswith(_DATA_SUFFIXES)))


# A str stays a str (data.path), None stays None (an unset data.eval_path).
@overload
def _absolute_data(path: str, base: str) -> str: ...
@overload
def _absolute_data(path: str | None, base: str) -> str | None: ...
def _absolute_data(path: str | None, base: str) -> str | None:
    if (not isinstance(path, str) or not path.strip() or path.startswith("sample:")
            or not is_local_path(path, base)):
        return path
    return _absolute(path, base)


def nbfinetune_home() -> str:
    """Where runs and converted models live: $NBFINETUNE_HOME, else ~/.cache/nbfinetune."""
    return os.environ.get("NBFINETUNE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "nbfinetune")

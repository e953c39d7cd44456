"""The one table of flat settings (`finetune(steps=...)`, `%finetune --steps`, `nbfinetune train --steps`).

Each row names a flat setting, the RunConfig field it sets, how a flag's text is read, its help and its
choices. The magic's and the CLI's flags, `build_config`'s flat keywords and the launcher's fields are
all derived from it, so a setting is spelled once and the surfaces cannot drift apart.

Config layer: stdlib only (argparse included); what `build_config` resolves beyond the table (rewards,
gpu="auto") is imported when it is asked for.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .config import BACKENDS, FORMATS, METHODS, PRECISIONS, SCHEDULES, RunConfig, absolute_paths

# The surfaces that take a setting as a command-line flag. The CLI trains on the local backend only, so
# the Modal settings are flags of the magic alone.
MAGIC = "magic"
CLI = "cli"
BOTH = (MAGIC, CLI)


@dataclass(frozen=True)
class Setting:
    name: str  # the flat keyword; its flag is --name with dashes
    path: str  # the dotted RunConfig field it sets
    type: type[Any]  # what the value is; a flag's text is read with it (lists and mappings are no flags)
    help: str | None = None
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()  # older keywords that keep working (max_steps=)
    cli_aliases: tuple[str, ...] = ()  # older flags the CLI keeps accepting (--max-steps)
    flags: tuple[str, ...] = ()  # the surfaces where it is a flag
    flag: str | None = None  # the flag when it is not --name: --reward, repeated, for `rewards`
    repeatable: bool = False

    @property
    def option(self) -> str:
        return self.flag or _dashed(self.name)

    def options(self, surface: str) -> list[str]:
        """The option strings of its flag on `surface`: the flag, then the old spellings kept there."""
        return [self.option, *(self.cli_aliases if surface == CLI else ())]


def _dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("model", "model", str, "hub id or local path", flags=BOTH),
    Setting("data", "data.path", str, "jsonl/json/csv/parquet file, hub dataset id, or sample:people",
            flags=BOTH),
    Setting("eval_data", "data.eval_path", str, "held-out data to evaluate on (default: a slice of --data)",
            flags=BOTH),
    Setting("format", "data.format", str, "the data's format (auto: detected from its fields)", FORMATS,
            flags=BOTH),
    Setting("backend", "backend", str, "where the run trains: local (this machine) or modal", BACKENDS,
            flags=(MAGIC,)),
    Setting("gpu", "gpu", str, "Modal GPU type: T4, L4, A10, L40S, A100-40GB, A100-80GB, H100, H200, B200; "
                               "':N' for N GPUs; 'auto': the cheapest that fits the run's memory plan",
            flags=(MAGIC,)),
    Setting("budget", "budget_usd", float, "Modal: cancel the run when its GPU cost reaches this many USD",
            aliases=("budget_usd",), flags=(MAGIC,)),
    Setting("steps", "train.max_steps", int, "optimizer steps to train", aliases=("max_steps",),
            cli_aliases=("--max-steps",), flags=BOTH),
    Setting("epochs", "train.epochs", float, "passes over the data (instead of --steps)", flags=BOTH),
    Setting("lr", "train.lr", float, "learning rate", flags=BOTH),
    Setting("r", "lora.r", int, "LoRA rank", flags=BOTH),
    Setting("alpha", "lora.alpha", float, "LoRA alpha (scale: alpha / r)", flags=BOTH),
    Setting("batch_size", "train.batch_size", int, "rows per batch (per process)", flags=BOTH),
    Setting("grad_accum", "train.grad_accum", int, "batches accumulated into one optimizer step", flags=BOTH),
    Setting("max_seq_len", "data.max_seq_len", int, "the most tokens in a row", flags=BOTH),
    Setting("eval_every", "eval.every", int, "evaluate every N steps (and at the end)", flags=BOTH),
    Setting("eval_samples", "eval.samples", int,
            "prompts answered by generation at each evaluation (default 24); 0: eval loss only", flags=BOTH),
    Setting("early_stopping", "eval.early_stopping", int,
            "stop after N evaluations without improvement (needs --eval-every); keeps the best adapter",
            flags=BOTH),
    Setting("early_stopping_metric", "eval.early_stopping_metric", str,
            "eval_loss (default) or e.g. json_match", flags=BOTH),
    Setting("save_every", "train.save_every", int,
            "save a checkpoint every N steps (resume continues from it)", flags=BOTH),
    Setting("seed", "train.seed", int, "random seed", flags=BOTH),
    Setting("quantization", "train.quantization", str, "nf4: QLoRA, the base model in 4-bit (bitsandbytes)",
            ("nf4",), flags=BOTH),
    Setting("method", "train.method", str,
            "sft (default); dpo: preference pairs prompt/chosen/rejected; grpo: prompts + --reward", METHODS,
            flags=BOTH),
    # Notebook functions are sent by value: build_config splits them from 'module:function' references.
    Setting("rewards", "train.rewards", str, "GRPO reward 'module:function' (repeatable)", flags=BOTH,
            flag="--reward", repeatable=True),
    Setting("name", "name", str, "a name for the run, shown in run lists and charts", flags=BOTH),
    # Keywords of finetune()/build_config only (lists, mappings, and settings rarely changed by hand).
    Setting("dropout", "lora.dropout", float, "LoRA dropout"),
    Setting("target_modules", "lora.target_modules", list, "'all-linear' or module names"),
    Setting("columns", "data.columns", dict, "our field name -> the file's, for odd schemas"),
    Setting("on_bad_rows", "data.on_bad_rows", str, "skip bad rows (reported) or stop", ("skip", "strict")),
    Setting("train_on", "data.train_on", str, "loss on the answers only or on every token",
            ("completions", "all")),
    Setting("metrics", "eval.metrics", list, "metric names or 'module:function' references"),
    Setting("precision", "train.precision", str, "training precision", PRECISIONS),
    Setting("schedule", "train.schedule", str, "learning-rate schedule", SCHEDULES),
    Setting("warmup_steps", "train.warmup_steps", int, "steps of linear learning-rate warm-up"),
    Setting("processes", "train.processes", int, "data-parallel processes"),
    Setting("dpo_beta", "train.dpo_beta", float, "DPO: strength of the pull toward the base model"),
    Setting("generations", "train.grpo_generations", int, "GRPO: completions per prompt"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# Every flat keyword build_config takes (names and aliases) -> the dotted field it sets.
FLAT_KEYS: dict[str, str] = {key: s.path for s in SETTINGS for key in (s.name, *s.aliases)}


def flag_settings(surface: str) -> Iterator[Setting]:
    """The settings that are flags of `surface` (MAGIC or CLI), in the table's order."""
    return (s for s in SETTINGS if surface in s.flags)


def add_flags(parser: argparse.ArgumentParser, surface: str, *, defaults: dict[str, Any] | None = None,
              notes: dict[str, str] | None = None) -> None:
    """Add the table's flags for `surface` to an argparse parser; each flag's dest is the setting's name.
    defaults: a surface's own defaults; notes: text appended to a help in parentheses (e.g. the default)."""
    defaults, notes = defaults or {}, notes or {}
    for setting in flag_settings(surface):
        kwargs: dict[str, Any] = {"dest": setting.name, "help": setting.help}
        if setting.name in notes:
            kwargs["help"] = f"{setting.help} ({notes[setting.name]})"
        if setting.repeatable:
            kwargs["action"] = "append"
        if setting.type is not str:
            kwargs["type"] = setting.type
        if setting.choices is not None:
            kwargs["choices"] = setting.choices
        if setting.name in defaults:
            kwargs["default"] = defaults[setting.name]
        parser.add_argument(*setting.options(surface), **kwargs)


def build_config(config: RunConfig | dict[str, Any] | str | None = None, **settings: Any) -> RunConfig:
    """A RunConfig from a base (object, nested dict or YAML text) plus flat keyword settings (the table's
    names and aliases; a dotted field such as "train.weight_decay" is taken as it is)."""
    if isinstance(config, RunConfig):
        base = config
    elif isinstance(config, dict):
        base = RunConfig.from_dict(config)
    elif isinstance(config, str):
        base = RunConfig.from_yaml(config)
    else:
        base = RunConfig()
    overrides: dict[str, Any] = {}
    auto_gpu = settings.get("gpu") == "auto"  # the memory planner picks it (nbfinetune.planner)
    for key, value in settings.items():
        if value is None or (key == "gpu" and auto_gpu):
            continue
        if key == "rewards":  # 'module:function' references and notebook functions (sent by value)
            from .rewards import split_rewards

            references, packed = split_rewards(list(value) if isinstance(value, (list, tuple)) else [value])
            overrides["train.rewards"], overrides["train.reward_code"] = references or None, packed or None
            continue
        # An unknown flat name goes on as it is: RunConfig refuses it naming the setting.
        overrides[FLAT_KEYS.get(key, key)] = value
    if "train.epochs" in overrides and "train.max_steps" not in overrides:
        overrides["train.max_steps"] = None
    built = absolute_paths(base.with_overrides(overrides) if overrides else base)
    if auto_gpu:
        from .planner import apply_choice, choose_gpu

        built = apply_choice(built, choose_gpu(built.model, built))
    return built

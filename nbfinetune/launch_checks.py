"""What can be checked in the kernel before a run starts, in well under a second: the model directory is
readable, LoRA targets exist in it, the data files exist, are not empty and fit the chosen format.

Nothing here imports torch or transformers, and nothing touches the network: a hub model or dataset id is
left for the worker (which says what it tried when it cannot find one).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Iterable

from .config import ConfigError, RunConfig, is_local_path

PEEK_ROWS = 200  # rows read to see that the data is usable; the worker checks every row


def check_before_launch(config: RunConfig) -> None:
    """Raise ConfigError (or data.prepare.DataError) naming the first thing that would fail the run."""
    model_dir = _model_dir(config.model)
    if model_dir is not None:
        _check_targets(config.lora.target_modules, _module_names(model_dir))
    if config.train.method != "sft":  # preference / prompt rows: the method's own row check
        from .data.preference import check_head

        for path in filter(None, (config.data.path, config.data.eval_path)):
            if is_local_path(path, os.getcwd()) or path.startswith("sample:"):
                check_head(path, config.train.method, config.data.columns, PEEK_ROWS)
        return
    fmt = _check_data(config.data.path, config.data.format, config.data.columns)
    if config.data.eval_path:
        _check_data(config.data.eval_path, fmt or config.data.format, config.data.columns)


def _model_dir(model: str) -> str | None:
    """The model's local directory when there is one (checked), else None (a hub id)."""
    base = os.getcwd()
    if not is_local_path(model, base, dir_only=True):
        return _cached_hub_dir(model)
    path = os.path.expanduser(model)
    if not os.path.isdir(path):
        raise ConfigError(f"model {model!r}: no such directory")
    config_file = os.path.join(path, "config.json")
    try:
        with open(config_file, encoding="utf-8") as handle:
            values = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {model!r}: cannot read config.json ({exc.__class__.__name__}: {exc}); "
                          "a model directory needs the config.json that save_pretrained writes") from None
    if not isinstance(values, dict) or "model_type" not in values:
        raise ConfigError(f"model {model!r}: config.json has no 'model_type'; is this a transformers model "
                          "directory?")
    return path


def _cached_hub_dir(model: str) -> str | None:
    """A hub model's directory when it is already on this machine (HF cache or the converted demo model)."""
    from .core.models import converted_dir  # stdlib-only module apart from its lazy imports

    if (converted_dir(model) / "config.json").is_file():
        return str(converted_dir(model))
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # an invalid repo id, no huggingface_hub: the worker will say
        return None
    return os.path.dirname(found) if isinstance(found, str) else None


def _module_names(model_dir: str) -> set[str] | None:
    """Dotted module paths of the weights (from the safetensors headers, no tensor read); None if unknown."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    try:
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as handle:
                keys: Iterable[str] = json.load(handle)["weight_map"]
        else:
            with open(os.path.join(model_dir, "model.safetensors"), "rb") as handle:
                size = struct.unpack("<Q", handle.read(8))[0]
                keys = json.loads(handle.read(size))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return {key.rsplit(".", 1)[0] for key in keys if key != "__metadata__" and "." in key}


def _check_targets(targets: str | list[str], modules: set[str] | None) -> None:
    if not isinstance(targets, list) or modules is None:
        return  # a string is "all-linear" or a regular expression, which peft matches itself
    leaves = sorted({m.rsplit(".", 1)[-1] for m in modules if not m.rsplit(".", 1)[-1].isdigit()})
    missing = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
    if missing:
        raise ConfigError(f"lora.target_modules: {', '.join(map(repr, missing))} not in the model; its "
                          f"modules include {', '.join(leaves[:20])}")


def _check_data(path: str, fmt: str, columns: dict[str, str] | None) -> str | None:
    """The data's format after reading its first rows; raises DataError when they cannot train."""
    from .data.prepare import DataError, iter_examples
    from .data.sources import resolve

    source, _ = resolve(path, None)
    if not is_local_path(source, os.getcwd()):
        return None  # a hub dataset: reading it may mean downloading it
    detected, stream = iter_examples(source, fmt, columns)
    seen = list(itertools.islice(stream, PEEK_ROWS))
    if any(example is not None for _, example, _ in seen):
        return detected
    if len(seen) < PEEK_ROWS:  # the whole source was read and no row can train
        first = "; ".join(f"row {row.number}: {problem}" for row, _, problem in seen[:3])
        more = f"; and {len(seen) - 3} more" if len(seen) > 3 else ""
        raise DataError(f"{source}: no usable rows ({len(seen)} read) — {first}{more}")
    return detected

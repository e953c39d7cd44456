"""Data sources: where rows come from, each with its 1-based row number (the line number for JSONL)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

SAMPLE_PREFIX = "sample:"
SAMPLES = {"people": ("people_train.jsonl", "people_eval.jsonl")}
_FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataSourceError(ValueError):
    """The data cannot be opened at all (as opposed to a bad row)."""


@dataclass(frozen=True)
class Row:
    number: int
    record: Any = None
    error: str | None = None
    file: str | None = None  # set when the source is a directory of files


def sample_files(name: str) -> tuple[str, str]:
    """(train, eval) paths of a dataset shipped inside the package."""
    if name not in SAMPLES:
        raise DataSourceError(f"unknown sample dataset {name!r}; shipped: {', '.join(SAMPLES)}")
    folder = resources.files("nbfinetune") / "samples"
    return tuple(str(folder / filename) for filename in SAMPLES[name])  # type: ignore[return-value]


def resolve(path: str, eval_path: str | None) -> tuple[str, str | None]:
    """Turn 'sample:NAME' into packaged files; a sample brings its own eval split."""
    if path.startswith(SAMPLE_PREFIX):
        train, evaluation = sample_files(path[len(SAMPLE_PREFIX):])
        return train, eval_path or evaluation
    return path, eval_path


def iter_rows(source: str) -> Iterator[Row]:
    """Rows of a file, of every supported file in a directory (sorted by name), or of a hub dataset."""
    source = os.path.expanduser(source)
    if os.path.isdir(source):
        files = sorted(f for f in os.listdir(source) if os.path.splitext(f)[1].lower() in _FILE_KINDS)
        if not files:
            raise DataSourceError(f"{source}: no .jsonl, .json, .csv or .parquet files in this directory")
        for name in files:
            for row in iter_rows(os.path.join(source, name)):
                yield dataclasses.replace(row, file=name)
        return
    kind = _FILE_KINDS.get(os.path.splitext(source)[1].lower())
    if os.path.exists(source):
        if kind is None:
            raise DataSourceError(f"{source}: unsupported file type; use .jsonl, .json, .csv or .parquet")
        yield from _READERS[kind](source)
        return
    if kind is not None or source.startswith((".", "/", "~")):
        raise DataSourceError(f"data file not found: {source}")
    yield from _hub_rows(source)


def _jsonl_rows(path: str) -> Iterator[Row]:
    # Line by line on purpose: a bad line is reported by its number and the rest still load.
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Row(number, json.loads(line))
            except json.JSONDecodeError as exc:
                yield Row(number, error=f"invalid JSON ({exc.msg} at column {exc.colno})")


def _json_rows(path: str) -> Iterator[Row]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataSourceError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataSourceError(f"{path}: expected a JSON list of records")
        data = lists[0]
    if not isinstance(data, list):
        raise DataSourceError(f"{path}: expected a JSON list of records")
    for number, record in enumerate(data, start=1):
        yield Row(number, record)


def _table_rows(kind: str) -> Any:
    def read(path: str) -> Iterator[Row]:
        import datasets

        table = datasets.load_dataset(kind, data_files=path, split="train")
        for number, record in enumerate(table, start=1):
            yield Row(number, record)

    return read


def _hub_rows(name: str) -> Iterator[Row]:
    """'org/name', 'org/name:config' or 'org/name:config@split' (split defaults to train)."""
    import datasets

    repo, _, split = name.partition("@")
    repo, _, config = repo.partition(":")
    try:
        table = datasets.load_dataset(repo, config or None, split=split or "train")
    except Exception as exc:  # datasets raises many kinds; the user needs the one line
        raise DataSourceError(f"could not load dataset {name!r} from the hub: {exc}") from None
    for number, record in enumerate(table, start=1):
        yield Row(number, record)


_READERS = {"jsonl": _jsonl_rows, "json": _json_rows, "csv": _table_rows("csv"), "parquet": _table_rows("parquet")}

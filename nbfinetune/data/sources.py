"""Data sources: where rows come from, each with its 1-based row number (the line number for JSONL)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..config import DATA_FILE_KINDS

SAMPLE_PREFIX = "sample:"
SAMPLES = {"people": ("people_train.jsonl", "people_eval.jsonl")}
_FILE_KINDS = DATA_FILE_KINDS


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


# "utf-8-sig" drops a byte-order mark; bytes that are not UTF-8 become lone surrogates, which the row's
# checks report by row number (rather than training on replacement characters).
_ENCODING = {"encoding": "utf-8-sig", "errors": "surrogateescape"}


def _parse(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, why the text is not usable JSON) — never an exception."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except RecursionError:
        return None, "JSON nested too deeply to be a row"
    except ValueError as exc:  # e.g. an integer longer than Python's 4,300-digit limit
        return None, f"invalid JSON ({str(exc).split(';')[0]})"


def _jsonl_rows(path: str) -> Iterator[Row]:
    # Line by line on purpose: a bad line is reported by its number and the rest still load.
    with open(path, **_ENCODING) as handle:  # type: ignore[call-overload]
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record, error = _parse(line)
            yield (Row(number, record) if error is None
                   else Row(number, error=error.replace(" at line 1 ", " at ")))


def _json_rows(path: str) -> Iterator[Row]:
    with open(path, **_ENCODING) as handle:  # type: ignore[call-overload]
        data, error = _parse(handle.read())
    if error is not None:
        raise DataSourceError(f"{path}: {error}")
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataSourceError(f"{path}: expected a JSON list of records")
        data = lists[0]
    if not isinstance(data, list):
        raise DataSourceError(f"{path}: expected a JSON list of records")
    for number, record in enumerate(data, start=1):
        yield Row(number, record)


CSV_FIELD_LIMIT = 64 * 1024 * 1024


def _csv_rows(path: str) -> Iterator[Row]:
    """CSV read with the stdlib reader: values are text; each bad line is a row problem, never an exception
    (empty cells are missing values, as pandas and datasets read them)."""
    import csv

    # A long text cell is a normal row (the default limit is 128 KB); an unclosed quote still ends as a
    # reported error at the end of the file rather than taking memory without bound.
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with open(path, newline="", **_ENCODING) as handle:  # type: ignore[call-overload]
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataSourceError(f"{path}: not a readable CSV header ({exc})") from None
        if header is None:
            return
        number = 0
        while True:
            number += 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader cannot find where the row ends: stop, say where
                yield Row(number, error=f"unreadable CSV at line {reader.line_num} ({exc}); the rest of the "
                                        "file was not read")
                return
            if not values:
                number -= 1
                continue
            if len(values) > len(header):
                yield Row(number, error=f"{len(values)} fields, but the header has {len(header)}")
                continue
            # A short row (trailing fields left off) is fine, its missing fields are absent: not strict.
            record = {name: (value if value != "" else None)
                      for name, value in zip(header, values, strict=False)}
            yield Row(number, record)


def _parquet_rows(path: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        batches = table.iter_batches(batch_size=1024)
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield Row(number, record)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataSourceError(f"{path}: not a readable Parquet file ({exc})") from None


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


_READERS = {"jsonl": _jsonl_rows, "json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}

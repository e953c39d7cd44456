"""Load → detect format → validate row by row → render → split. Produces the data a run trains on,
plus a report that names every bad row by number before any training starts."""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .formats import (
    FORMAT_FIELDS,
    Example,
    RowProblem,
    apply_columns,
    detect_format,
    normalize,
    split_for_generation,
)
from .render import Rendered, render_many
from .sources import DataSourceError, Row, iter_rows, resolve

_Item = TypeVar("_Item")
MAX_LISTED_PROBLEMS = 1000  # the report keeps the first ones; problem_count has them all
DETECT_ROWS = 200
TOOLS_DROPPED = ("this row and others have 'tools' (function schemas): they are not given to the chat "
                 "template, so they are dropped; the model trains on the messages' text only")


@dataclass
class Problem:
    row: int
    message: str
    split: str = "train"
    file: str | None = None
    # "error": the row is skipped; "warning": the row is used as noted (e.g. truncated).
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.file} " if self.file else ""
        return f"{self.split} {where}row {self.row}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        out = {"row": self.row, "message": self.message, "split": self.split, "severity": self.severity}
        return out | ({"file": self.file} if self.file else {})


@dataclass
class DataReport:
    format: str | None
    rows: int = 0
    valid: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    truncated: int = 0
    tokens: dict[str, float] = field(default_factory=dict)

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(problem)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "rows": self.rows, "valid": self.valid, "truncated": self.truncated,
                "problem_count": self.problem_count, "problems": [p.to_dict() for p in self.problems],
                "tokens": self.tokens}


@dataclass
class PreparedData:
    train: list[Rendered]
    eval: list[Rendered]
    # (prompt messages, reference answer) for generation-based metrics.
    eval_cases: list[tuple[list[dict[str, str]], str]]
    report: DataReport


class DataError(ValueError):
    """No usable training data (or bad rows under the strict policy); the message lists the first problems."""


def iter_examples(source: str, fmt: str | None = "auto", columns: dict[str, str] | None = None
                  ) -> tuple[str | None, Iterator[tuple[Row, Example | None, str | None]]]:
    """(format, stream of (row, example or None, problem message or None)); reads the source once, lazily."""
    try:
        rows = iter_rows(source)
        head = list(itertools.islice(rows, DETECT_ROWS))
        if len(head) == DETECT_ROWS and not any(isinstance(r.record, dict) for r in head):
            # The first rows are all broken: read on to the first object, so that later good rows are
            # judged by their format instead of all being reported as not objects.
            for row in rows:
                head.append(row)
                if isinstance(row.record, dict):
                    break
    except DataSourceError as exc:
        raise DataError(str(exc)) from None
    if not head:
        raise DataError(f"{source}: no rows — the data is empty")
    records = [apply_columns(r.record, columns) for r in head if r.error is None]
    # None (no row was an object) needs no fields: the check would pass.
    if fmt is not None and fmt != "auto":
        _check_fields_fit(source, fmt, records)
    if fmt == "auto":
        detected = detect_format(records)
        if detected is None and any(isinstance(r, dict) for r in records):
            keys = next((sorted(r) for r in records if isinstance(r, dict)), [])
            raise DataError(f"{source}: could not detect the data format from fields {keys}; expected one of "
                            "messages, conversations, instruction/output, prompt/completion or text "
                            "(pass format=... explicitly, or map your columns with columns={...})")
        fmt = detected

    def stream() -> Iterator[tuple[Row, Example | None, str | None]]:
        warned_tools = False
        try:
            for row in itertools.chain(head, rows):
                if row.error is not None:
                    yield row, None, row.error
                    continue
                if fmt is None:  # nothing in the first rows was even an object: report each row
                    yield row, None, f"expected a JSON object, got {type(row.record).__name__}"
                    continue
                try:
                    example = normalize(apply_columns(row.record, columns), fmt)
                except RowProblem as problem:
                    yield row, None, str(problem)
                    continue
                # A usable row with a note (said once per source): the note is a warning, not a skip.
                note = None
                if not warned_tools and isinstance(row.record, dict) and row.record.get("tools"):
                    warned_tools = True
                    note = TOOLS_DROPPED
                yield row, example, note
        except DataSourceError as exc:
            raise DataError(str(exc)) from None

    return fmt, stream()


def _check_fields_fit(source: str, fmt: str, records: list[Any]) -> None:
    """Refuse once, up front, a format that none of the first rows has the fields for (instead of the same
    "missing field" problem on every row), and say which format the fields look like."""
    objects = [r for r in records if isinstance(r, dict)]
    needed = FORMAT_FIELDS.get(fmt, ())
    if not objects or any(all(key in r for key in needed) for r in objects):
        return
    detected = detect_format(objects)
    fields = sorted({str(key) for r in objects[:20] for key in r})[:12]
    looks = (f"; they look like the '{detected}' format (use format='{detected}' or 'auto')" if detected
             else "; they match no known format (map them with columns={...})")
    raise DataError(f"{source}: format '{fmt}' needs the field(s) {', '.join(needed)}, but the rows have "
                    f"{', '.join(fields)}{looks}")


def load_examples(source: str, fmt: str | None = "auto", split: str = "train",
                  columns: dict[str, str] | None = None
                  ) -> tuple[str | None, list[tuple[int, Example, str | None]], DataReport]:
    fmt, stream = iter_examples(source, fmt, columns)
    report = DataReport(format=fmt)
    examples: list[tuple[int, Example, str | None]] = []
    for row, example, problem in stream:
        report.rows += 1
        if example is None:
            report.add(Problem(row.number, problem or "unusable row", split, row.file))
        else:
            if problem:
                report.add(Problem(row.number, problem, split, row.file, "warning"))
            examples.append((row.number, example, row.file))
    return fmt, examples, report


def prepare(settings: Any, tokenizer: Any, seed: int = 42) -> PreparedData:
    """settings: a config.DataSettings. Bad rows are skipped and reported (or refused when strict)."""
    train_source, eval_source = resolve(settings.path, settings.eval_path)
    columns = getattr(settings, "columns", None)
    fmt, examples, report = load_examples(train_source, settings.format, columns=columns)
    if eval_source:
        _, eval_examples, eval_report = load_examples(eval_source, fmt, split="eval", columns=columns)
        report.rows += eval_report.rows
        for problem in eval_report.problems:
            report.add(problem)
    else:
        examples, eval_examples = _split(examples, settings.eval_fraction, seed)
    train = _render_all(tokenizer, examples, settings, report, "train")
    evaluation = _render_all(tokenizer, eval_examples, settings, report, "eval")
    errors = report.errors
    if getattr(settings, "on_bad_rows", "skip") == "strict" and errors:
        raise DataError(f"{len(errors)} bad row(s) and on_bad_rows='strict' — " + _first(errors))
    if not train:
        raise DataError(f"no usable training rows in {train_source}"
                        + (f" — {_first(errors)}" if errors else ""))
    report.valid = len(train) + len(evaluation)
    report.tokens = token_stats([len(r.input_ids) for r in train])
    cases = [case for _, example, _ in eval_examples if (case := split_for_generation(example))]
    return PreparedData(train=train, eval=evaluation, eval_cases=cases, report=report)


def _first(problems: list[Problem], n: int = 5) -> str:
    more = f"; and {len(problems) - n} more" if len(problems) > n else ""
    return "; ".join(str(p) for p in problems[:n]) + more


def token_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {"min": ordered[0], "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1],
            "total": sum(ordered)}


def _split(examples: list[_Item], fraction: float, seed: int) -> tuple[list[_Item], list[_Item]]:
    """(train, eval): a seeded random `fraction` of the items (examples, preference pairs, prompts)."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * fraction))
    eval_idx = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in eval_idx],
            [e for i, e in enumerate(examples) if i in eval_idx])


CHUNK = 256  # rows rendered per tokenizer call


def render_checked(tokenizer: Any, examples: list[Example], rows: list[int],
                   settings: Any) -> list[tuple[Rendered | None, str | None, str]]:
    """(rendered or None, problem or None, severity) per row — shared by training and validation."""
    out: list[tuple[Rendered | None, str | None, str]] = []
    for result in render_many(tokenizer, examples, settings.max_seq_len, settings.train_on, rows):
        if isinstance(result, RowProblem):
            out.append((None, str(result), "error"))
        elif result.truncated:
            out.append((result, f"{result.full_length} tokens, longer than "
                                f"max_seq_len={settings.max_seq_len}: truncated", "warning"))
        else:
            out.append((result, None, ""))
    return out


def _render_all(tokenizer: Any, examples: list[tuple[int, Example, str | None]], settings: Any,
                report: DataReport, split: str) -> list[Rendered]:
    out = []
    for first in range(0, len(examples), CHUNK):
        chunk = examples[first: first + CHUNK]
        checked = render_checked(tokenizer, [e for _, e, _ in chunk], [row for row, _, _ in chunk], settings)
        for (row, _, file), (rendered, problem, severity) in zip(chunk, checked, strict=True):
            if problem:
                report.add(Problem(row, problem, split, file, severity))
            if rendered is not None:
                report.truncated += rendered.truncated
                out.append(rendered)
    return out

"""Load → detect format → validate row by row → render → split. Produces the data a run trains on,
plus a report that names every bad row by number before any training starts."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from .formats import Example, RowProblem, detect_format, normalize, split_for_generation
from .render import Rendered, render
from .sources import DataSourceError, iter_rows, resolve


@dataclass
class Problem:
    row: int
    message: str
    split: str = "train"

    def __str__(self) -> str:
        return f"{self.split} row {self.row}: {self.message}"


@dataclass
class DataReport:
    format: str | None
    rows: int = 0
    valid: int = 0
    problems: list[Problem] = field(default_factory=list)
    truncated: int = 0
    tokens: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "rows": self.rows, "valid": self.valid, "truncated": self.truncated,
                "problems": [{"row": p.row, "message": p.message, "split": p.split} for p in self.problems],
                "tokens": self.tokens}


@dataclass
class PreparedData:
    train: list[Rendered]
    eval: list[Rendered]
    # (prompt messages, reference answer) for generation-based metrics.
    eval_cases: list[tuple[list[dict[str, str]], str]]
    report: DataReport


class DataError(ValueError):
    """No usable training data; the message includes the first problems found."""


def load_examples(source: str, fmt: str = "auto", split: str = "train") -> tuple[str, list[tuple[int, Example]], DataReport]:
    rows = list(iter_rows(source))
    if fmt == "auto":
        detected = detect_format(r.record for r in rows if r.error is None)
        if detected is None:
            keys = next((sorted(r.record) for r in rows if isinstance(r.record, dict)), [])
            raise DataError(f"{source}: could not detect the data format from fields {keys}; expected one of "
                            "messages, conversations, instruction/output, prompt/completion or text "
                            "(or pass format=... explicitly)")
        fmt = detected
    report = DataReport(format=fmt, rows=len(rows))
    examples: list[tuple[int, Example]] = []
    for row in rows:
        if row.error is not None:
            report.problems.append(Problem(row.number, row.error, split))
            continue
        try:
            examples.append((row.number, normalize(row.record, fmt)))
        except RowProblem as problem:
            report.problems.append(Problem(row.number, str(problem), split))
    return fmt, examples, report


def prepare(settings: Any, tokenizer: Any, seed: int = 42) -> PreparedData:
    """settings: a config.DataSettings. Bad rows are skipped and reported."""
    train_source, eval_source = resolve(settings.path, settings.eval_path)
    try:
        fmt, examples, report = load_examples(train_source, settings.format)
        if eval_source:
            _, eval_examples, eval_report = load_examples(eval_source, fmt, split="eval")
            report.rows += eval_report.rows
            report.problems += eval_report.problems
        else:
            examples, eval_examples = _split(examples, settings.eval_fraction, seed)
    except DataSourceError as exc:
        raise DataError(str(exc)) from None
    train = _render_all(tokenizer, examples, settings, report, "train")
    evaluation = _render_all(tokenizer, eval_examples, settings, report, "eval")
    if not train:
        first = "; ".join(str(p) for p in report.problems[:5])
        raise DataError(f"no usable training rows in {train_source}" + (f" — {first}" if first else ""))
    report.valid = len(train) + len(evaluation)
    lengths = [len(r.input_ids) for r in train]
    report.tokens = token_stats(lengths)
    cases = [case for _, example in eval_examples if (case := split_for_generation(example))]
    return PreparedData(train=train, eval=evaluation, eval_cases=cases, report=report)


def token_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {"min": ordered[0], "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1],
            "total": sum(ordered)}


def _split(examples: list[tuple[int, Example]], fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * fraction))
    eval_idx = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in eval_idx],
            [e for i, e in enumerate(examples) if i in eval_idx])


def _render_all(tokenizer: Any, examples: list[tuple[int, Example]], settings: Any, report: DataReport,
                split: str) -> list[Rendered]:
    out = []
    for row, example in examples:
        try:
            rendered = render(tokenizer, example, settings.max_seq_len, settings.train_on, row=row)
        except RowProblem as problem:
            report.problems.append(Problem(row, str(problem), split))
            continue
        if rendered.truncated:
            report.truncated += 1
            report.problems.append(Problem(row, f"{rendered.full_length} tokens, longer than max_seq_len="
                                                f"{settings.max_seq_len}: truncated", split))
        out.append(rendered)
    return out

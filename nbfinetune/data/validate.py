"""Validate a dataset without training: every row checked, streaming, in bounded memory.

Keeps only counts, token lengths (one int per row) and the first problems and examples, so a file
of any size can be checked before a GPU second is spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from .prepare import CHUNK, DataReport, Problem, iter_examples, render_checked, token_stats
from .render import Rendered
from .sources import resolve


@dataclass
class Validation:
    report: DataReport
    max_seq_len: int
    lengths: list[int] = field(default_factory=list)  # full token length of each usable row
    preview: list[Rendered] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.valid > 0

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict() | {"max_seq_len": self.max_seq_len}


def validate(source: str, fmt: str = "auto", tokenizer: Any = None, max_seq_len: int = 512,
             train_on: str = "completions", columns: dict[str, str] | None = None,
             preview: int = 3) -> Validation:
    source, _ = resolve(source, None)
    found, stream = iter_examples(source, fmt, columns)
    report = DataReport(format=found)
    result = Validation(report=report, max_seq_len=max_seq_len)
    settings = SimpleNamespace(max_seq_len=max_seq_len, train_on=train_on)
    chunk: list[tuple[Any, Any, str | None]] = []

    def flush() -> None:
        # Rows are rendered a chunk at a time (one tokenizer call) but reported in file order.
        usable = [(row, example) for row, example, _ in chunk if example is not None]
        checked = iter(render_checked(tokenizer, [e for _, e in usable], [r.number for r, _ in usable],
                                      settings)
                       if tokenizer is not None and usable else [])
        for row, example, problem in chunk:
            if example is None:
                report.add(Problem(row.number, problem or "unusable row", file=row.file))
                continue
            if problem:  # a usable row with a note (e.g. dropped tool schemas)
                report.add(Problem(row.number, problem, file=row.file, severity="warning"))
            if tokenizer is None:
                report.valid += 1
                continue
            rendered, problem, severity = next(checked)
            if problem:
                report.add(Problem(row.number, problem, file=row.file, severity=severity))
            if rendered is None:
                continue
            report.valid += 1
            report.truncated += rendered.truncated
            result.lengths.append(rendered.full_length)
            if len(result.preview) < preview:
                result.preview.append(rendered)
        chunk.clear()

    for item in stream:
        report.rows += 1
        chunk.append(item)
        if len(chunk) >= CHUNK:
            flush()
    flush()
    report.tokens = token_stats([min(n, max_seq_len) for n in result.lengths])
    return result

"""Eval metrics: plain callables `metric(prediction, reference) -> float` in [0, 1].

Built-ins are referred to by name; user metrics by 'module:function' so a worker process can import them.
A metric that pays for its work (the LLM judge) also has `usage_counts()`: its running totals of calls,
tokens and cost, read duck-typed here so the trainer can report them without knowing what a judge is.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any

# What a counting metric's usage_counts() returns: running totals since the process started.
USAGE_COUNTS = ("calls", "failures", "cached", "input_tokens", "output_tokens")
Metric = Callable[[str, str], float]


def _parse_json(text: str) -> Any:
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    return json.loads(text)


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def json_valid(prediction: str, reference: str) -> float:
    try:
        _parse_json(prediction)
    except ValueError:
        return 0.0
    return 1.0


def json_match(prediction: str, reference: str) -> float:
    """1 when the prediction parses as JSON and equals the reference's JSON value exactly."""
    try:
        return float(_parse_json(prediction) == _parse_json(reference))
    except ValueError:
        return 0.0


def contains(prediction: str, reference: str) -> float:
    return float(reference.strip().lower() in prediction.lower())


BUILTIN: dict[str, Metric] = {"exact_match": exact_match, "json_valid": json_valid, "json_match": json_match,
                              "contains": contains}
# Built-ins that live in higher layers, named the way user metrics are ('module:function') and imported
# when first used: this table sits at the bottom (config validates names against it), the LLM judge near
# the top (it needs the endpoint client and the evals machinery).
BY_REFERENCE = {"judge": "nbfinetune.evals.judge:judge_metric"}
NAMES = (*BUILTIN, *BY_REFERENCE)


def resolve_metric(name: str) -> Metric:
    if name in BUILTIN:
        return BUILTIN[name]
    module, _, attribute = BY_REFERENCE.get(name, name).partition(":")
    if not attribute:
        raise ValueError(f"unknown metric {name!r}: use one of {', '.join(NAMES)} or 'module:function'")
    function = getattr(importlib.import_module(module), attribute)
    if not callable(function):
        raise ValueError(f"metric {name!r} is not callable")
    return function


def usage_totals(names: Sequence[str]) -> dict[str, Any]:
    """The summed running totals (USAGE_COUNTS plus cost_usd, None when no price is known) of the metrics
    among `names` that count their work; {} when none does."""
    totals: dict[str, Any] = {}
    for name in names:
        counts = getattr(resolve_metric(name), "usage_counts", None)
        found = counts() if callable(counts) else None
        if not found:
            continue
        for key in USAGE_COUNTS:
            totals[key] = totals.get(key, 0) + int(found.get(key) or 0)
        totals["cost_usd"] = _add_cost(totals.get("cost_usd"), found.get("cost_usd"))
    return totals


def usage_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the counting metrics did between two `usage_totals`; {} when nothing was counted."""
    if not after:
        return {}
    spent: dict[str, Any] = {key: after.get(key, 0) - before.get(key, 0) for key in USAGE_COUNTS}
    cost, earlier = after.get("cost_usd"), before.get("cost_usd")
    spent["cost_usd"] = None if cost is None else cost - (earlier or 0.0)
    return spent if any(spent[key] for key in USAGE_COUNTS) else {}


def _add_cost(total: float | None, more: Any) -> float | None:
    if isinstance(more, (int, float)) and not isinstance(more, bool):
        return (total or 0.0) + float(more)
    return total


def default_metrics(references: Sequence[str]) -> list[str]:
    """JSON references get json_match/json_valid. On free-form answers an exact match says next to nothing,
    so none is computed by default: eval loss is the measure, and the generated samples are shown to read."""
    if references and all(json_valid(r, r) for r in references):
        return ["json_match", "json_valid"]
    return []


def score_each(names: Sequence[str], predictions: Sequence[str],
               references: Sequence[str]) -> dict[str, list[float]]:
    """Every metric's value on every case."""
    return {name: [float(resolve_metric(name)(p, r)) for p, r in zip(predictions, references, strict=True)]
            for name in names}


def averages(table: dict[str, list[float]]) -> dict[str, float]:
    return {name: sum(values) / len(values) if values else 0.0 for name, values in table.items()}


def score(names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    return averages(score_each(names, predictions, references))

"""evaluate(eval data × models × metrics): every model's answer to every example, each metric's score,
latency and tokens, in one DataFrame. Endpoint calls run concurrently (the openai client retries rate
limits and server errors with back-off); a call that still fails is recorded on its row, the rest go on.
Answers are cached on disk by (model, example, settings): running the cell again makes no request."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

from . import cache as cache_
from .judge import Judge
from .models import Answer, Target, ask, resolve


@dataclass(frozen=True)
class Settings:
    max_tokens: int = 256
    temperature: float = 0.0
    system: str | None = None


def load_cases(eval_data: Any, limit: int | None = None) -> list[tuple[list[dict[str, str]], str]]:
    """(prompt messages, reference) per example: 'sample:NAME' (its eval split), a file, records, a
    DataFrame."""
    from ..data.formats import split_for_generation
    from ..data.materialize import materialize
    from ..data.prepare import load_examples

    if isinstance(eval_data, str) and eval_data.startswith("sample:"):
        from ..data import sample_files

        eval_data = str(sample_files(eval_data.removeprefix("sample:"))[1])
    source, _ = materialize(eval_data)
    _, examples, report = load_examples(str(source), split="eval")
    cases = [case for _, example, _ in examples if (case := split_for_generation(example)) is not None]
    if not cases:
        raise ValueError(f"eval_data: no example with an assistant answer to compare with ({report.rows} "
                         "rows read)")
    return cases[:limit] if limit else cases


def evaluate(eval_data: Any, models: Sequence[Any] | dict[str, Any], metrics: Sequence[Any] | None = None,
             *, limit: int | None = None, max_tokens: int = 256, temperature: float = 0.0,
             system: str | None = None, concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 3,
             progress: bool = True, store: Any = None) -> Any:
    """Each model (a Run, a run id, a base model name, or nbft.endpoint(...); or {label: model}) answers each
    example of eval_data ('sample:NAME', a file, records, a DataFrame; `limit` rows); metrics: names
    (json_match, ...; 'module:function') and judges (nbft.judge(...)). Returns EvalResults: `.df`,
    `.summary()`, `.worst()`, `.economics(...)`, and a view when displayed."""
    from ..metrics import default_metrics, resolve_metric
    from .results import EvalResults

    if not models:
        raise ValueError("models: name at least one run, base model or endpoint")
    cases = load_cases(eval_data, limit)
    targets = _unique_labels([_labelled(resolve(m, store), label) for label, m in
                              (models.items() if isinstance(models, dict) else ((None, m) for m in models))])
    metrics = list(metrics) if metrics is not None else default_metrics([ref for _, ref in cases])
    named = {m: resolve_metric(m) for m in metrics if isinstance(m, str)}
    judges = [m for m in metrics if isinstance(m, Judge)]
    settings = Settings(max_tokens, temperature, system)

    answers = _answer_all(targets, cases, settings, concurrency, timeout_s, max_retries, progress)
    rows = []
    for t_index, target in enumerate(targets):
        for e_index, (messages, reference) in enumerate(cases):
            answer = answers[t_index, e_index]
            row = {"model": target.label, "kind": target.kind, "example": e_index,
                   "prompt": messages[-1]["content"], "reference": reference, **asdict(answer),
                   "cost_usd": _cost(target, answer)}
            for name, function in named.items():
                row[name] = None if answer.output is None else float(function(answer.output, reference))
            rows.append(row)
    _judge_all(judges, rows, targets, concurrency, progress)
    import pandas as pd

    return EvalResults(pd.DataFrame(rows), targets, [*named, *(j.name for j in judges)], judges, settings)


def _labelled(target: Target, label: str | None) -> Target:
    if label is not None:
        target.label = str(label)
    return target


def _unique_labels(targets: list[Target]) -> list[Target]:
    seen: dict[str, int] = {}
    for target in targets:
        seen[target.label] = seen.get(target.label, 0) + 1
        if seen[target.label] > 1:
            target.label = f"{target.label} ({seen[target.label]})"
    return targets


def _cost(target: Target, answer: Answer) -> float | None:
    ep = target.endpoint
    if ep is None or ep.usd_per_m_input is None or ep.usd_per_m_output is None or answer.input_tokens is None:
        return None
    return (answer.input_tokens * ep.usd_per_m_input
            + (answer.output_tokens or 0) * ep.usd_per_m_output) / 1e6


def _answer_all(targets: list[Target], cases: list, settings: Settings, concurrency: int, timeout_s: float,
                max_retries: int, progress: bool) -> dict[tuple[int, int], Answer]:
    store = cache_.Cache()
    answers: dict[tuple[int, int], Answer] = {}
    work: list[tuple[int, int, str]] = []
    for t_index, target in enumerate(targets):
        for e_index, (messages, _reference) in enumerate(cases):
            digest = cache_.key("answer", target.identity, _messages(messages, settings), asdict(settings))
            kept = store.get(digest)
            if kept is not None:
                answers[t_index, e_index] = Answer(**kept)
            else:
                work.append((t_index, e_index, digest))
    if not work:
        return answers
    server = _serve_local([targets[t] for t, _, _ in work if targets[t].local])
    try:
        clients = {t: _client(targets[t], server, timeout_s, max_retries) for t in {t for t, _, _ in work}}

        def one(item: tuple[int, int, str]) -> None:
            t_index, e_index, digest = item
            client, model, secret = clients[t_index]
            if client is None:
                answer = Answer(None, None, None, None, model)  # model holds why there is no client
            else:
                answer = ask(client, model, _messages(cases[e_index][0], settings), settings.max_tokens,
                             settings.temperature, secret)
            if answer.error is None:
                store.put(digest, asdict(answer))
            answers[t_index, e_index] = answer

        _run(one, work, concurrency, progress, "answers")
    finally:
        if server is not None:
            server.stop()
    return answers


def _messages(messages: list[dict[str, str]], settings: Settings) -> list[dict[str, str]]:
    if settings.system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": settings.system}, *messages]
    return list(messages)


def _serve_local(targets: list[Target]) -> Any:
    """One server on this machine for the runs and base models that still need answers."""
    if not targets:
        return None
    from ..serve.local import BaseSpec, serve_models

    specs: dict[str, BaseSpec] = {}
    for target in targets:
        # Local targets carry their base model's path, runs their adapter's (models.resolve sees to it).
        base, adapter = target.base_path, target.adapter_path
        assert base is not None
        spec = specs.setdefault(base, BaseSpec(base, base))
        if target.kind == "run" and all(names[0] != target.run.id for names, _, _ in spec.adapters):
            assert adapter is not None
            spec.adapters.append(([target.run.id], adapter, f"run {target.run.id}"))
    return serve_models(list(specs.values()), quiet=True)


def _client(target: Target, server: Any, timeout_s: float, max_retries: int) -> tuple[Any, str, str]:
    if target.endpoint is not None:
        endpoint = replace(target.endpoint, timeout_s=timeout_s, max_retries=max_retries)
        try:
            return endpoint._client(), endpoint.model, os.environ.get(endpoint.api_key_env, "")
        except RuntimeError as exc:
            return None, str(exc), ""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, timeout=timeout_s,
                           max_retries=max_retries)
    name = target.run.id if target.kind == "run" else target.base_path
    assert name is not None  # a local base target always has its path
    return client, name, server.api_key


def _judge_all(judges: list[Judge], rows: list[dict[str, Any]], targets: list[Target], concurrency: int,
               progress: bool) -> None:
    labels = [t.label for t in targets]
    by_key = {(row["model"], row["example"]): row for row in rows}
    for judge in judges:
        baseline = judge.baseline or labels[0]
        if judge.mode == "pairwise" and baseline not in labels:
            raise ValueError(f"judge baseline {baseline!r} is not one of the models: {', '.join(labels)}")

        def one(row: dict[str, Any], judge: Judge = judge, baseline: str = baseline) -> None:
            row[judge.name], row[f"{judge.name}_reason"] = None, None
            if row["output"] is None:
                return
            if judge.mode == "score":
                verdict = judge.grade(row["prompt"], row["output"], row["reference"])
            else:
                other = by_key[baseline, row["example"]]
                if row["model"] == baseline or other["output"] is None:
                    return
                verdict = judge.compare(row["prompt"], row["output"], other["output"], row["reference"])
            row[judge.name] = verdict.score
            row[f"{judge.name}_reason"] = (verdict.reason if verdict.error is None
                                           else f"judge failed: {verdict.error}")

        _run(one, rows, concurrency, progress, judge.name)


def _run(function: Any, items: list[Any], concurrency: int, progress: bool, what: str) -> None:
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
            tqdm(total=len(items), desc=what, disable=not progress) as bar:
        for _ in pool.map(function, items):
            bar.update()

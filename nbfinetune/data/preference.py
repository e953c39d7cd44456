"""Preference rows (DPO): load, validate row by row, render each answer with the chat template.

Accepted shapes (those TRL and LLaMA-Factory document):
- explicit prompt: {"prompt": str | messages, "chosen": str | message | messages, "rejected": ...}
- implicit prompt: {"chosen": messages, "rejected": messages}, the shared leading turns are the prompt
- alpaca style: {"instruction", "input"?, "chosen", "rejected"}
- ShareGPT: {"conversations", "chosen", "rejected"}
Messages may be {"role", "content"} or ShareGPT's {"from", "value"}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .formats import Example, apply_columns
from .prepare import DataError, DataReport, PreparedData, Problem, _split, render_checked, token_stats
from .render import Rendered
from .sources import DataSourceError, iter_rows, resolve

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "model": "assistant", "bot": "assistant"}


# (row number, prompt messages, chosen answer, rejected answer, file) of a usable preference row
PairRow = tuple[int, list[dict[str, str]], str, str, str | None]


class PreferenceProblem(ValueError):
    """One row is not a usable preference pair; the message says which field and why."""


@dataclass
class PreferencePair:
    """A prompt with a preferred and a dispreferred answer, rendered; `prompt` keeps the messages for
    evaluation."""

    row: int
    chosen: Rendered
    rejected: Rendered
    prompt: list[dict[str, str]]
    chosen_text: str

    @property
    def input_ids(self) -> list[int]:  # for token statistics, like an SFT example
        return self.chosen.input_ids + self.rejected.input_ids


def is_preference(record: Any) -> bool:
    return isinstance(record, dict) and "chosen" in record and "rejected" in record


def normalize_pair(record: Any) -> tuple[list[dict[str, str]], str, str]:
    """(prompt messages, chosen answer, rejected answer) or PreferenceProblem."""
    if not isinstance(record, dict):
        raise PreferenceProblem(f"expected a JSON object, got {type(record).__name__}")
    for name in ("chosen", "rejected"):
        if record.get(name) is None:
            raise PreferenceProblem(f"missing field '{name}'")
    prompt = _prompt(record)
    chosen = _answer(record["chosen"], "chosen")
    rejected = _answer(record["rejected"], "rejected")
    if prompt is None:  # implicit prompt: the leading turns both lists share
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise PreferenceProblem("no prompt: give 'prompt' (or 'instruction'/'conversations'), or chosen "
                                    "and rejected as message lists that share the leading turns")
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not prompt:
            raise PreferenceProblem("chosen and rejected share no leading turns, so there is no prompt")
    if not any(m["role"] == "user" for m in prompt):
        raise PreferenceProblem("the prompt has no user message")
    return prompt, _single_answer(chosen, "chosen"), _single_answer(rejected, "rejected")


def _prompt(record: dict[str, Any]) -> list[dict[str, str]] | None:
    if record.get("prompt") is not None:
        value = record["prompt"]
        if isinstance(value, str):
            if not value.strip():
                raise PreferenceProblem("field 'prompt' is empty")
            return [{"role": "user", "content": value}]
        return _messages(value, "prompt")
    if record.get("instruction") is not None:
        if not isinstance(record["instruction"], str) or not record["instruction"].strip():
            raise PreferenceProblem("field 'instruction' must be non-empty text")
        extra = record.get("input")
        text = record["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
        return [{"role": "user", "content": text}]
    if record.get("conversations") is not None:
        return _messages(record["conversations"], "conversations")
    return None


def _answer(value: Any, name: str) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _messages([value], name)
    return _messages(value, name)


def _single_answer(value: str | list[dict[str, str]], name: str) -> str:
    if isinstance(value, str):
        text = value
    elif len(value) == 1 and value[0]["role"] == "assistant":
        text = value[0]["content"]
    else:
        roles = [m["role"] for m in value]
        raise PreferenceProblem(f"field '{name}' must end the conversation with one assistant answer, "
                                f"got roles {roles}")
    if not text.strip():
        raise PreferenceProblem(f"field '{name}' is empty")
    return text


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise PreferenceProblem(f"field '{name}' must be text or a non-empty list of messages, got "
                                f"{type(value).__name__}")
    out = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise PreferenceProblem(f"{name}[{index}] must be a message object, got {type(message).__name__}")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if role not in ROLES:
            raise PreferenceProblem(f"{name}[{index}] has role {role!r}; expected user, assistant or system")
        if not isinstance(content, str):
            raise PreferenceProblem(f"{name}[{index}] content must be text, got {type(content).__name__}")
        out.append({"role": ROLES[role], "content": content})
    return out


def prompt_of(record: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """(prompt messages, other fields) of a prompts-dataset row: {"prompt": str | messages, ...}, or a
    chat row whose last assistant turn becomes the field `answer` (so SFT data can be reused with a
    checking reward)."""
    if not isinstance(record, dict):
        raise PreferenceProblem(f"expected a JSON object, got {type(record).__name__}")
    rest = {k: v for k, v in record.items() if k not in ("prompt", "messages")}
    if "prompt" in record:
        prompt = record["prompt"]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PreferenceProblem("field 'prompt' is empty")
            return [{"role": "user", "content": prompt}], rest
        return _messages(prompt, "prompt"), rest
    if "messages" in record:
        messages = _messages(record["messages"], "messages")
        if messages[-1]["role"] == "assistant":
            rest.setdefault("answer", messages[-1]["content"])
            messages = messages[:-1]
        if not any(m["role"] == "user" for m in messages):
            raise PreferenceProblem("the prompt has no user message")
        return messages, rest
    raise PreferenceProblem("missing field 'prompt' (or chat 'messages')")


def checked_rows(source: str, split: str, columns: dict[str, str] | None, report: DataReport,
                 normalize: Callable[[dict[str, Any]], Any]) -> Iterator[tuple[Any, Any]]:
    """(row, normalize(record)) for every readable row; unreadable rows and PreferenceProblems go to the
    report with their row number (shared by preference pairs and GRPO prompts)."""
    try:
        for row in iter_rows(source):
            report.rows += 1
            if row.error is not None:
                report.add(Problem(row.number, row.error, split, row.file))
                continue
            try:
                value = normalize(apply_columns(row.record, columns))
            except PreferenceProblem as problem:
                report.add(Problem(row.number, str(problem), split, row.file))
                continue
            yield row, value
    except DataSourceError as exc:
        raise DataError(str(exc)) from None


def load_pairs(source: str, split: str, columns: dict[str, str] | None, report: DataReport
               ) -> list[PairRow]:
    pairs = checked_rows(source, split, columns, report, normalize_pair)
    out = [(row.number, prompt, chosen, rejected, row.file) for row, (prompt, chosen, rejected) in pairs]
    if report.rows == 0:
        raise DataError(f"{source}: no rows — the data is empty")
    return out


def _render_pairs(tokenizer: Any, rows: list[PairRow], settings: Any, report: DataReport,
                  split: str) -> list[PreferencePair]:
    examples = [Example(messages=tuple(prompt + [{"role": "assistant", "content": answer}]))
                for _, prompt, chosen, rejected, _ in rows for answer in (chosen, rejected)]
    numbers = [row for row, *_ in rows for _ in (0, 1)]
    checked = render_checked(tokenizer, examples, numbers, settings)
    out = []
    for index, (row, prompt, chosen_text, _, file) in enumerate(rows):
        (chosen, p1, s1), (rejected, p2, s2) = checked[2 * index], checked[2 * index + 1]
        problems = [(f"chosen: {p1}", s1) if p1 else None, (f"rejected: {p2}", s2) if p2 else None]
        for problem in filter(None, problems):
            report.add(Problem(row, problem[0], split, file, problem[1]))
        if chosen is None or rejected is None:
            continue
        if not chosen.trained_tokens or not rejected.trained_tokens:
            report.add(Problem(row, f"the prompt fills max_seq_len={settings.max_seq_len}: no answer token "
                                    "is left", split, file))
            continue
        report.truncated += chosen.truncated or rejected.truncated
        out.append(PreferencePair(row, chosen, rejected, prompt, chosen_text))
    return out


def prepare_preferences(settings: Any, tokenizer: Any, seed: int = 42) -> PreparedData:
    """Like data.prepare for SFT, with PreferencePair items; eval cases are (prompt, chosen answer)."""
    train_source, eval_source = resolve(settings.path, settings.eval_path)
    columns = getattr(settings, "columns", None)
    report = DataReport(format="preference")
    rows = load_pairs(train_source, "train", columns, report)
    if eval_source:
        eval_rows = load_pairs(eval_source, "eval", columns, report)
    else:
        rows, eval_rows = _split(rows, settings.eval_fraction, seed)
    train = _render_pairs(tokenizer, rows, settings, report, "train")
    evaluation = _render_pairs(tokenizer, eval_rows, settings, report, "eval")
    errors = report.errors
    if getattr(settings, "on_bad_rows", "skip") == "strict" and errors:
        raise DataError(f"{len(errors)} bad row(s) and on_bad_rows='strict' — "
                        + "; ".join(map(str, errors[:5])))
    if not train:
        first = "; ".join(map(str, errors[:5]))
        raise DataError(f"no usable preference rows in {train_source}" + (f" — {first}" if first else ""))
    report.valid = len(train) + len(evaluation)
    report.tokens = token_stats([len(p.input_ids) for p in train])
    cases = [(p.prompt, p.chosen_text) for p in evaluation]
    return PreparedData(train=train, eval=evaluation, eval_cases=cases, report=report)  # type: ignore[arg-type]


def people_preferences(split: str = "train", seed: int = 0) -> list[dict[str, str]]:
    """The people sample as preference rows: chosen = the right JSON, rejected = a corrupted answer (a wrong
    value, a missing key, prose around the JSON, or JSON that does not parse) — the demo's DPO data."""
    import json
    import random

    from .sources import sample_files

    path = sample_files("people")[0 if split == "train" else 1]
    rng = random.Random(seed)
    rows = []
    for line in open(path, encoding="utf-8"):
        messages = json.loads(line)["messages"]
        prompt, answer = messages[0]["content"], messages[1]["content"]
        value = json.loads(answer)
        kind = rng.randrange(4)
        if kind == 0:
            wrong = dict(value, age=value["age"] + rng.choice([-11, -3, 2, 7, 13]))
            rejected = json.dumps(wrong)
        elif kind == 1:
            # A key is drawn per field, so zero, one or more fields go missing.
            rejected = json.dumps({k: v for k, v in value.items()
                                   if k != rng.choice(["name", "age", "city"])})
        elif kind == 2:
            rejected = (f"Sure! Here is the information: {value['name']} is {value['age']} and lives in "
                        f"{value['city']}.")
        else:
            rejected = answer.rstrip("}").replace('"', "'")
        rows.append({"prompt": prompt, "chosen": answer, "rejected": rejected})
    return rows


def check_head(path: str, method: str, columns: dict[str, str] | None, peek: int = 200) -> None:
    """Launch check for DPO/GRPO data: DataError unless one of the first `peek` rows is usable, naming the
    first problems (stdlib only, no tokenizer)."""
    import itertools

    source, _ = resolve(path, None)
    check = prompt_of if method == "grpo" else normalize_pair
    problems = []
    try:
        for row in itertools.islice(iter_rows(source), peek):
            if row.error is not None:
                problems.append(f"row {row.number}: {row.error}")
                continue
            try:
                check(apply_columns(row.record, columns))
                return
            except PreferenceProblem as problem:
                problems.append(f"row {row.number}: {problem}")
    except DataSourceError as exc:
        raise DataError(str(exc)) from None
    what = ("preference rows (prompt/chosen/rejected)" if method == "dpo"
            else "prompt rows ('prompt' or chat 'messages')")
    raise DataError(f"{source}: no usable {what} in the first rows — "
                    + ("; ".join(problems[:5]) or "the data is empty"))

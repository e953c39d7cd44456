"""Dataset formats: detect which one a file uses and normalize each row to chat messages (or plain text).

Stdlib only. Every problem with a row is a RowProblem that a person can act on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import FORMATS

# The format names are spelled once, in config.FORMATS ("auto" and these, in this order).
KNOWN_FORMATS = tuple(f for f in FORMATS if f != "auto")
CHAT, SHAREGPT, INSTRUCTION, PROMPT_COMPLETION, TEXT = KNOWN_FORMATS
ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                   "system": "system", "tool": "tool", "function_call": "assistant", "observation": "tool",
                   "function": "tool"}
_SIGNATURES = (
    (CHAT, ("messages",)),
    (SHAREGPT, ("conversations",)),
    (INSTRUCTION, ("instruction", "output")),
    (PROMPT_COMPLETION, ("prompt", "completion")),
    (TEXT, ("text",)),
)

FORMAT_FIELDS = dict(_SIGNATURES)


class RowProblem(ValueError):
    """One row cannot be used; the message says why in plain words."""


@dataclass(frozen=True)
class Example:
    """A normalized row: chat messages, or raw text for continued pre-training."""

    messages: tuple[dict[str, str], ...] | None = None
    text: str | None = None
    # Indices of assistant messages that are context only (LLaMA-Factory's `loss_weight: 0`): not trained.
    untrained: tuple[int, ...] = ()


def detect_format(records: Iterable[Any], sample: int = 200) -> str | None:
    """The format most of the first `sample` dict rows match, or None when none matches."""
    votes: Counter[str] = Counter()
    for index, record in enumerate(records):
        if index >= sample:
            break
        if isinstance(record, dict):
            match = format_of(record)
            if match:
                votes[match] += 1
    return votes.most_common(1)[0][0] if votes else None


def apply_columns(record: Any, columns: dict[str, str] | None) -> Any:
    """Rename a row's fields from the user's schema to ours: columns maps our name -> their name,
    e.g. {"prompt": "question", "completion": "answer"}."""
    if not columns or not isinstance(record, dict):
        return record
    renamed = dict(record)
    for ours, theirs in columns.items():
        if theirs in renamed:
            renamed[ours] = renamed.pop(theirs)
    return renamed


def format_of(record: dict[str, Any]) -> str | None:
    for name, keys in _SIGNATURES:
        if all(key in record for key in keys):
            return name
    return None


def normalize(record: Any, fmt: str) -> Example:
    if not isinstance(record, dict):
        raise RowProblem(f"expected a JSON object, got {type(record).__name__}")
    if fmt == CHAT:
        return _turns(_field(record, "messages", list), _CHAT_SCHEMA)
    if fmt == SHAREGPT:
        return _turns(_field(record, "conversations", list), _SHAREGPT_SCHEMA)
    if fmt == INSTRUCTION:
        instruction = _field(record, "instruction", str)
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise RowProblem(f"field 'input' must be text, got {type(extra).__name__}")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": _field(record, "output", str)}]
        if isinstance(record.get("system"), str) and record["system"].strip():
            messages.insert(0, {"role": "system", "content": record["system"]})
        return Example(messages=_checked(messages))
    if fmt == PROMPT_COMPLETION:
        messages = [{"role": "user", "content": _field(record, "prompt", str)},
                    {"role": "assistant", "content": _field(record, "completion", str)}]
        return Example(messages=_checked(messages))
    if fmt == TEXT:
        text = _field(record, "text", str)
        if not text.strip():
            raise RowProblem("field 'text' is empty")
        _unicode(text, "field 'text'")
        return Example(text=text)
    raise ValueError(f"unknown format {fmt!r}")


def split_for_generation(example: Example) -> tuple[list[dict[str, str]], str] | None:
    """(prompt messages, reference answer): everything before the last assistant turn, and that turn."""
    if example.messages is None:
        return None
    messages = list(example.messages)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def _field(record: dict[str, Any], name: str, kind: type) -> Any:
    if name not in record or record[name] is None:
        raise RowProblem(f"missing field '{name}'")
    value = record[name]
    if not isinstance(value, kind):
        expected = "text" if kind is str else "a list"
        raise RowProblem(f"field '{name}' must be {expected}, got {type(value).__name__}")
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        # Content parts: OpenAI's {"type": "text", "text": ...} and LLaMA-Factory v1's {"type": "text",
        # "value": ...}. Other parts (images, tool calls, reasoning) are not trainable as text here.
        texts, other = [], []
        for part in value:
            text = part.get("text", part.get("value")) if isinstance(part, dict) else None
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(text, str):
                texts.append(text)
            elif isinstance(part, dict) and isinstance(part.get("type"), str):
                other.append(part["type"])
            else:
                found = sorted(part) if isinstance(part, dict) else type(part).__name__
                raise RowProblem(f"{where}: content parts must be objects like "
                                 f"{{'type': 'text', 'text': ...}} (or 'value': ... as LLaMA-Factory writes "
                                 f"them); found {found}")
        if other and not texts:
            raise RowProblem(f"{where}: only {', '.join(sorted(set(other)))} content parts; text parts are "
                             "what can be trained (supported: type 'text' with 'text' or 'value')")
        return "".join(texts)
    raise RowProblem(f"{where}: content must be text or a list of text parts, got {type(value).__name__}")


def _unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RowProblem(f"{where}: text that is not valid Unicode (a lone surrogate such as \\ud800, or "
                         "bytes that are not UTF-8)") from None


@dataclass(frozen=True)
class _TurnSchema:
    label: str  # what a turn is called in messages: "message" or "turn"
    role_key: str
    content_key: str
    roles: dict[str, str]  # accepted speaker names (lower-case) → our role
    expected: str


_CHAT_SCHEMA = _TurnSchema("message", "role", "content", {r: r for r in ROLES}, ", ".join(ROLES))
_SHAREGPT_SCHEMA = _TurnSchema("turn", "from", "value", _SHAREGPT_ROLES, "human, gpt or system")


def _turns(items: list[Any], schema: _TurnSchema) -> Example:
    out = []
    untrained = []
    for index, item in enumerate(items, start=1):
        where = f"{schema.label} {index}"
        if not isinstance(item, dict):
            raise RowProblem(f"{where} must be an object with '{schema.role_key}' and '{schema.content_key}'")
        speaker = item.get(schema.role_key)
        role = schema.roles.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            kind = "role" if schema is _CHAT_SCHEMA else "speaker"
            raise RowProblem(f"{where}: unknown {kind} {speaker!r} (expected one of {schema.expected})")
        if schema.content_key not in item:
            raise RowProblem(f"{where}: missing field '{schema.content_key}'")
        out.append({"role": role, "content": _content(item[schema.content_key] or "", where)})
        weight = item.get("loss_weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight:
            raise RowProblem(f"{where}: loss_weight must be a number >= 0, got {weight!r}")
        if role == "assistant" and weight == 0:
            untrained.append(index - 1)
    messages = _checked(out)
    if untrained and len(untrained) == sum(m["role"] == "assistant" for m in messages):
        raise RowProblem("every assistant turn has loss_weight 0: nothing to learn")
    return Example(messages=messages, untrained=tuple(untrained))


def _checked(messages: list[dict[str, str]]) -> tuple[dict[str, str], ...]:
    if not messages:
        raise RowProblem("no messages")
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise RowProblem("no assistant turn: nothing to learn from")
    if not assistant[-1]["content"].strip():
        raise RowProblem("the last assistant turn is empty")
    for index, message in enumerate(messages, start=1):
        _unicode(message["content"], f"message {index}")
    return tuple(messages)

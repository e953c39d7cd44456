"""Render normalized examples to token ids with the model's own chat template, and mask the loss.

Loss is on assistant turns by default. The trainable spans are found in character space (rendering the
conversation up to each assistant turn with and without it) and mapped to tokens through the fast
tokenizer's offsets, so any chat template works, including ones without `{% generation %}` markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .formats import Example, RowProblem

IGNORE = -100


@dataclass
class Rendered:
    row: int
    input_ids: list[int]
    # targets[t] is the token to predict after input_ids[t] (already shifted), IGNORE where not trained.
    targets: list[int]
    full_length: int

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE)


def render(tokenizer: Any, example: Example, max_seq_len: int, train_on: str = "completions",
           row: int = 0) -> Rendered:
    result = render_many(tokenizer, [example], max_seq_len, train_on, [row])[0]
    if isinstance(result, RowProblem):
        raise result
    return result


def render_many(tokenizer: Any, examples: Sequence[Example], max_seq_len: int, train_on: str = "completions",
                rows: Sequence[int] | None = None) -> list[Rendered | RowProblem]:
    """Render a chunk of examples: templates one by one, then one tokenizer call for the whole chunk
    (a fast tokenizer encodes a batch in parallel, about twice as fast as row by row on 2 cores)."""
    rows = rows if rows is not None else [0] * len(examples)
    results: list[Rendered | RowProblem | None] = [None] * len(examples)
    texts: list[str] = []
    # (index, assistant spans; None for plain text)
    pending: list[tuple[int, list[tuple[int, int]] | None]] = []
    for index, example in enumerate(examples):
        try:
            if example.text is not None:
                texts.append(example.text)
                pending.append((index, None))
            else:
                messages = list(example.messages or ())
                text, chat_spans = _render_chat(tokenizer, messages, set(example.untrained))
                texts.append(text)
                pending.append((index, chat_spans))
        except RowProblem as problem:
            results[index] = problem
    if texts:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        encodings = zip(pending, encoded["input_ids"], encoded["offset_mapping"], strict=True)
        for (index, spans), ids, offsets in encodings:
            try:
                results[index] = _finish(tokenizer, ids, offsets, spans, max_seq_len, train_on, rows[index])
            except RowProblem as problem:
                results[index] = problem
    return results  # type: ignore[return-value]


def _finish(tokenizer: Any, ids: list[int], offsets: list[tuple[int, int]],
            spans: list[tuple[int, int]] | None, max_seq_len: int, train_on: str, row: int) -> Rendered:
    if spans is None:  # plain text: every token is trained, and the end of text too
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    elif train_on == "all":
        labels = list(ids)
    else:
        labels = _mask(ids, offsets, spans)
    full_length = len(ids)
    ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    targets = labels[1:] + [IGNORE]
    rendered = Rendered(row=row, input_ids=ids, targets=targets, full_length=full_length)
    if rendered.trained_tokens == 0:
        if full_length > max_seq_len:
            raise RowProblem(f"{full_length} tokens, longer than max_seq_len={max_seq_len}: after truncation "
                             "nothing is left to learn, so the row is dropped")
        raise RowProblem("nothing to learn after masking (no assistant tokens)")
    return rendered


def _mask(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Token ids inside an assistant span (by characters), IGNORE elsewhere. Spans come in text order, so
    one pointer walks them with the tokens: linear in tokens + spans, however many turns a row has."""
    if len(spans) == 1:  # the common single-answer row: no per-token loop over spans
        first, last = spans[0]
        return [tok if first <= start < end <= last else IGNORE
                for tok, (start, end) in zip(ids, offsets, strict=True)]
    ordered = sorted(spans)
    out = []
    current = 0
    for tok, (start, end) in zip(ids, offsets, strict=True):
        while current < len(ordered) and ordered[current][1] < end:
            current += 1
        inside = (current < len(ordered) and end > start
                  and ordered[current][0] <= start and end <= ordered[current][1])
        out.append(tok if inside else IGNORE)
    return out


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text a model sees before it answers: the same template as training, with the generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _render_chat(tokenizer: Any, messages: list[dict[str, str]],
                 untrained: frozenset[int] | set[int] = frozenset()) -> tuple[str, list[tuple[int, int]]]:
    if not getattr(tokenizer, "chat_template", None):
        raise RowProblem("the model's tokenizer has no chat template; use a chat/instruct model or plain "
                         "text data")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    # Rendering each prefix is exact but quadratic in the turns; past a few turns, find each answer in
    # the one rendering instead (linear), as for templates that rewrite earlier turns.
    by_prefix = sum(m["role"] == "assistant" for m in messages) <= PREFIX_RENDER_TURNS
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index in untrained:
            if message["role"] == "assistant" and message["content"] and not by_prefix:
                found = full.find(message["content"], cursor)
                cursor = found + len(message["content"]) if found >= 0 else cursor
            continue
        if not by_prefix:
            start = full.find(message["content"], cursor)
            if start < 0:
                raise RowProblem(f"the chat template dropped assistant turn {index + 1}; cannot mask it")
            cursor = _answer_span(tokenizer, full, start, message["content"], spans)
            continue
        before = (tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
                  if index else "")
        last = index == len(messages) - 1  # the same call as `full`: one render saved per row
        through = full if last else tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if index and full.startswith(through) and through.startswith(before):
            spans.append((len(before), len(through)))
            cursor = len(through)
            continue
        # Templates that rewrite earlier turns (e.g. drop reasoning): locate the answer text itself.
        start = full.find(message["content"], cursor)
        if start < 0:
            raise RowProblem(f"the chat template dropped assistant turn {index + 1}; cannot mask it")
        cursor = _answer_span(tokenizer, full, start, message["content"], spans)
    return full, spans


PREFIX_RENDER_TURNS = 16


def _answer_span(tokenizer: Any, full: str, start: int, content: str, spans: list[tuple[int, int]]) -> int:
    """Add the span of an answer found at `start`, with the end-of-turn marker that follows it so the model
    learns to stop; returns where the next search starts."""
    end = start + len(content)
    eos = tokenizer.eos_token or ""
    if eos and full.startswith(eos, end):
        end += len(eos)
    spans.append((start, end))
    return end


def trained_spans(tokenizer: Any, rendered: Rendered) -> list[tuple[str, bool]]:
    """The example as the model sees it, cut into (text, trained?) runs — token i is trained when the
    target after token i-1 is set."""
    flags = [False] + [t != IGNORE for t in rendered.targets[:-1]]
    runs: list[tuple[str, bool]] = []
    start = 0
    for index in range(1, len(flags) + 1):
        if index == len(flags) or flags[index] != flags[start]:
            runs.append((tokenizer.decode(rendered.input_ids[start:index]), flags[start]))
            start = index
    return runs

"""Batched generation for many adapters on one base model: requests that arrive within a few
milliseconds of each other are answered by one `generate` call, each row with its own adapter (peft's
mixed-adapter batches), its own stop strings and token limit, streaming text per row.

The engine knows nothing of HTTP or asyncio: a request carries a callback that the engine thread calls
with each text delta and, once, with the finish reason.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .protocol import APIError, ChatRequest, Sampling

# (delta text, finish reason or None); finish reasons: "stop", "length", "cancelled", "error: <message>".
Sink = Callable[[str, str | None], None]
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
DEFAULT_MAX_TOKENS = 512


@dataclass
class Generation:
    """One request in flight; its state is only touched by the engine thread (cancel is a flag)."""

    adapter: str
    tokenizer: Any
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    sink: Sink
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the answer already handed to the sink
    finish_reason: str | None = None
    cancelled: bool = False

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        self.cancelled = True

    def finish(self, reason: str, text: str | None = None) -> None:
        if text is not None and len(text) > self.sent:
            self.sink(text[self.sent:], None)
            self.sent = len(text)
        self.finish_reason = reason
        self.sink("", reason)

    def accept(self, token: int) -> None:
        """Take one generated token: emit the text that is now certain, or finish."""
        if self.cancelled:
            return self.finish("cancelled")
        if token == self.tokenizer.eos_token_id:
            return self.finish("stop", self._text())
        self.ids.append(token)
        text = self._text()
        for stop in self.stop:
            at = text.find(stop)
            if at >= 0:  # nothing of a stop string was sent: _held_back kept it
                return self.finish("stop", text[:at])
        if len(self.ids) >= self.max_tokens:
            return self.finish("length", text)
        safe = len(text) - _held_back(text, self.stop)
        if safe > self.sent:
            self.sink(text[self.sent:safe], None)
            self.sent = safe

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters may still turn out to be part of a stop string, or of a character
    whose bytes are not all generated yet."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class Engine:
    """One base model with its adapters; a scheduler thread batches whatever is waiting."""

    def __init__(self, loaded: Any, max_batch: int = 32, batch_window_s: float = 0.005, max_waiting: int = 256) -> None:
        self.loaded = loaded
        self.max_batch, self.batch_window_s, self.max_waiting = max_batch, batch_window_s, max_waiting
        self._waiting: deque[Generation] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.batches = 0  # generate calls made; for tests and the benchmark
        self._thread = threading.Thread(target=self._loop, name="nbfinetune-serve-engine", daemon=True)
        self._thread.start()

    @property
    def adapters(self) -> list[str]:
        return list(self.loaded.tokenizers)

    def prepare(self, request: ChatRequest, adapter: str, sink: Sink) -> Generation:
        """Render and size-check a request (raises APIError 413) without queueing it."""
        from ..data.render import render_prompt

        tokenizer = self.loaded.tokenizers[adapter]
        try:
            prompt = render_prompt(tokenizer, request.messages)
        except Exception as exc:  # a template that rejects the conversation (e.g. roles out of order)
            raise APIError(400, f"messages: the model's chat template rejected them: {exc}", param="messages") from None
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = self.loaded.context_length - len(ids)
        if room < 1:
            raise APIError(413, f"messages: the prompt is {len(ids)} tokens; this model's context is "
                                f"{self.loaded.context_length}", param="messages", code="context_length_exceeded")
        if request.max_tokens is not None and request.max_tokens > room:
            raise APIError(413, f"max_tokens: {request.max_tokens} plus the prompt's {len(ids)} tokens exceed this "
                                f"model's context of {self.loaded.context_length}", param="max_tokens",
                           code="context_length_exceeded")
        max_tokens = request.max_tokens or min(DEFAULT_MAX_TOKENS, room)
        return Generation(adapter, tokenizer, ids, max_tokens, request.sampling, request.stop, sink)

    def submit(self, generation: Generation) -> None:
        with self._wake:
            if self._closed:
                raise APIError(503, "the server is shutting down", type="server_error")
            if len(self._waiting) >= self.max_waiting:
                raise APIError(503, f"overloaded: {len(self._waiting)} requests are waiting; retry shortly",
                               type="server_error", code="overloaded")
            self._waiting.append(generation)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # --- the scheduler thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    for generation in self._waiting:
                        generation.finish("cancelled")
                    return
            time.sleep(self.batch_window_s)  # let the requests that arrive together share the batch
            batch = self._take_batch()
            if batch:
                self._run(batch)

    def _take_batch(self) -> list[Generation]:
        """Up to max_batch waiting requests with the same sampling settings (one generate call has one),
        oldest first; the others keep their place in the queue."""
        with self._wake:
            live = [g for g in self._waiting if not g.cancelled]
            for generation in self._waiting:
                if generation.cancelled:
                    generation.finish("cancelled")
            if not live:
                self._waiting.clear()
                return []
            key = live[0].sampling
            batch = [g for g in live if g.sampling == key][: self.max_batch]
            chosen = set(map(id, batch))
            self._waiting = deque(g for g in live if id(g) not in chosen)
            return batch

    def _run(self, batch: list[Generation]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        self.batches += 1
        base = self.loaded.tokenizers[BASE]
        pad = base.pad_token_id if base.pad_token_id is not None else base.eos_token_id
        width = max(len(g.prompt_ids) for g in batch)
        # Left padding: every row's next token is at the same position of the batch.
        input_ids = torch.tensor([[pad] * (width - len(g.prompt_ids)) + g.prompt_ids for g in batch])
        mask = torch.tensor([[0] * (width - len(g.prompt_ids)) + [1] * len(g.prompt_ids) for g in batch])

        class _Rows(StoppingCriteria):
            def __call__(self, ids: Any, _scores: Any, **_kwargs: Any) -> Any:
                for row, (generation, token) in enumerate(zip(batch, ids[:, -1].tolist())):
                    if not generation.done:
                        generation.accept(token)
                return torch.tensor([g.done for g in batch], dtype=torch.bool, device=ids.device)

        sampling = batch[0].sampling
        options = ({"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
                   if not sampling.greedy else {"do_sample": False})
        eos = sorted({g.tokenizer.eos_token_id for g in batch if g.tokenizer.eos_token_id is not None})
        if len(self.loaded.tokenizers) > 1:  # a PeftModel: each row names its adapter
            options["adapter_names"] = [g.adapter for g in batch]
        try:
            with torch.no_grad():
                self.loaded.model.generate(
                    input_ids=input_ids.to(self.loaded.device), attention_mask=mask.to(self.loaded.device),
                    max_new_tokens=max(g.max_tokens for g in batch), eos_token_id=eos or None, pad_token_id=pad,
                    stopping_criteria=StoppingCriteriaList([_Rows()]), **options)
        except Exception as exc:  # noqa: BLE001 — every waiting client gets the error, the engine lives on
            for generation in batch:
                if not generation.done:
                    generation.finish(f"error: {type(exc).__name__}: {exc}")
            return
        for generation in batch:
            if not generation.done:  # generate stopped on its own (context full)
                generation.finish("length", generation._text())

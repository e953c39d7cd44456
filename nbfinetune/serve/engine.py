"""Batched generation for many adapters on one base model: every request in flight is one row of a
running batch (continuous batching), each row with its own adapter (peft's mixed-adapter batches), its
own sampling settings, stop strings and token limit, streaming text per row.

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

    def __init__(self, loaded: Any, max_batch: int = 32, batch_window_s: float = 0.005,
                 max_waiting: int = 256) -> None:
        self.loaded = loaded
        self.max_batch, self.batch_window_s, self.max_waiting = max_batch, batch_window_s, max_waiting
        self._waiting: deque[Generation] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.batches = 0  # prefills run (each takes every request waiting at that moment)
        self.min_new_tokens = 0  # benchmarks: no end of answer before this many tokens
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
            raise APIError(400, f"messages: the model's chat template rejected them: {exc}",
                           param="messages") from None
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = self.loaded.context_length - len(ids)
        if room < 1:
            raise APIError(413, f"messages: the prompt is {len(ids)} tokens; this model's context is "
                                f"{self.loaded.context_length}", param="messages",
                           code="context_length_exceeded")
        if request.max_tokens is not None and request.max_tokens > room:
            raise APIError(413, f"max_tokens: {request.max_tokens} plus the prompt's {len(ids)} tokens "
                                f"exceed this model's context of {self.loaded.context_length}",
                           param="max_tokens", code="context_length_exceeded")
        max_tokens = request.max_tokens or min(DEFAULT_MAX_TOKENS, room)
        return Generation(adapter, tokenizer, ids, max_tokens, request.sampling, request.stop, sink)

    def submit(self, *generations: Generation) -> None:
        """Queue requests (several at once join the running batch together)."""
        with self._wake:
            if self._closed:
                raise APIError(503, "the server is shutting down", type="server_error")
            if len(self._waiting) + len(generations) > self.max_waiting:
                raise APIError(503, f"overloaded: {len(self._waiting)} requests are waiting; retry shortly",
                               type="server_error", code="overloaded")
            self._waiting.extend(generations)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # --- the scheduler thread --------------------------------------------------------------------
    # Continuous batching: one decoding step at a time for every active row; waiting requests join
    # between steps (their prompts prefilled together, their KV cache left-padded into the running one),
    # finished rows leave. So a new request never waits for a whole batch to end.
    def _loop(self) -> None:
        batch: _Batch | None = None
        new: list[Generation] = []
        while True:
            with self._wake:
                while not self._waiting and batch is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    for generation in [*self._waiting, *(batch.rows if batch else [])]:
                        if not generation.done:
                            generation.finish("cancelled")
                    return
            if batch is None:
                time.sleep(self.batch_window_s)  # let the requests that arrive together share the prefill
            try:
                new = self._take(self.max_batch - (len(batch.rows) if batch else 0))
                if new:
                    self.batches += 1
                    joined = self._prefill(new)
                    batch = joined if batch is None else batch.merge(joined)
                if batch is not None:
                    batch = self._step(batch)
            except Exception as exc:  # noqa: BLE001 — every client in the batch gets the error; the engine lives on
                for generation in [*(batch.rows if batch else []), *new]:
                    if not generation.done:
                        generation.finish(f"error: {type(exc).__name__}: {exc}")
                batch = None

    def _take(self, room: int) -> list[Generation]:
        with self._wake:
            taken: list[Generation] = []
            while self._waiting and len(taken) < room:
                generation = self._waiting.popleft()
                if generation.cancelled:
                    generation.finish("cancelled")
                else:
                    taken.append(generation)
            return taken

    def _forward(self, rows: list[Generation], input_ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        import torch

        extra = {"adapter_names": [g.adapter for g in rows]} if len(self.loaded.tokenizers) > 1 else {}
        device = self.loaded.device
        with torch.no_grad():
            out = self.loaded.model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                    position_ids=positions.to(device), use_cache=True,
                                    **{self._cache_argument(): cache}, **extra)
        # transformers 5.x renames past_key_values to cache (the old name warns, then goes in 5.40).
        return out.logits, out.get("cache") or out.get("past_key_values")

    def _cache_argument(self) -> str:
        import inspect

        if not hasattr(self, "_cache_name"):
            model = self.loaded.model
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            parameters = inspect.signature(base.forward).parameters
            self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        return self._cache_name

    def _prefill(self, rows: list[Generation]) -> _Batch:
        import torch

        base = self.loaded.tokenizers[BASE]
        pad = base.pad_token_id if base.pad_token_id is not None else base.eos_token_id
        width = max(len(g.prompt_ids) for g in rows)
        ids = torch.tensor([[pad] * (width - len(g.prompt_ids)) + g.prompt_ids for g in rows])
        mask = torch.tensor([[0] * (width - len(g.prompt_ids)) + [1] * len(g.prompt_ids) for g in rows])
        logits, cache = self._forward(rows, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), None)
        return _Batch(rows, cache, mask, self._pick(rows, logits[:, -1]))

    def _step(self, batch: _Batch) -> _Batch | None:
        """Hand each row its next token; drop finished rows; run one decoding step for the rest."""
        import torch

        for generation, token in zip(batch.rows, batch.next_tokens.tolist(), strict=True):
            generation.accept(token)
        keep = [i for i, g in enumerate(batch.rows) if not g.done]
        if not keep:
            return None
        batch = batch.select(keep)
        positions = batch.mask.sum(-1, keepdim=True)
        mask = torch.cat([batch.mask, torch.ones(len(keep), 1, dtype=batch.mask.dtype)], dim=1)
        logits, cache = self._forward(batch.rows, batch.next_tokens[:, None], mask, positions, batch.cache)
        return _Batch(batch.rows, cache, mask, self._pick(batch.rows, logits[:, -1]))

    def _pick(self, rows: list[Generation], logits: Any) -> Any:
        """Each row's next token with its own sampling settings (greedy: argmax, as `generate` does)."""
        import torch

        logits = logits.float()
        for index, generation in enumerate(rows):
            if len(generation.ids) < self.min_new_tokens and generation.tokenizer.eos_token_id is not None:
                logits[index, generation.tokenizer.eos_token_id] = float("-inf")  # benchmarks: fixed lengths
        tokens = logits.argmax(-1)
        for index, generation in enumerate(rows):
            if generation.sampling.greedy:
                continue
            scores = logits[index] / generation.sampling.temperature
            probs = torch.softmax(scores, dim=-1)
            if generation.sampling.top_p < 1.0:
                ordered, order = probs.sort(descending=True)
                drop = ordered.cumsum(-1) - ordered > generation.sampling.top_p  # keep the nucleus
                ordered[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, ordered)
            tokens[index] = torch.multinomial(probs / probs.sum(), 1)[0]
        return tokens.cpu()


@dataclass
class _Batch:
    """The running batch: its rows, their shared KV cache (left-padded to one length), the attention mask
    over it, and each row's next token (sampled, not yet in the cache)."""

    rows: list[Generation]
    cache: Any
    mask: Any
    next_tokens: Any

    def select(self, keep: list[int]) -> _Batch:
        import torch

        if len(keep) == len(self.rows):
            return self
        index = torch.tensor(keep)
        mask = self.mask[index]
        unused = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading columns no row needs any more
        for layer in self.cache.layers:
            layer.keys = layer.keys[index.to(layer.keys.device), :, unused:]
            layer.values = layer.values[index.to(layer.values.device), :, unused:]
        return _Batch([self.rows[i] for i in keep], self.cache, mask[:, unused:], self.next_tokens[index])

    def merge(self, other: _Batch) -> _Batch:
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])

        def left_pad(tensor: Any, dim: int) -> Any:
            missing = width - tensor.shape[dim]
            if not missing:
                return tensor
            shape = list(tensor.shape)
            shape[dim] = missing
            return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):  # one model: same layers
            mine.keys = torch.cat([left_pad(mine.keys, 2), left_pad(theirs.keys, 2)], dim=0)
            mine.values = torch.cat([left_pad(mine.values, 2), left_pad(theirs.values, 2)], dim=0)
        return _Batch(self.rows + other.rows, self.cache,
                      torch.cat([left_pad(self.mask, 1), left_pad(other.mask, 1)]),
                      torch.cat([self.next_tokens, other.next_tokens]))

"""Chat with a base model plus a trained adapter, streaming tokens.

The adapter directory carries the tokenizer it was trained with, so chat renders prompts with exactly
the training chat template and stops at the same EOS; a differing base template is reported.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .data.render import render_prompt


class ChatSource(Protocol):
    """What the chat widget and `ask` talk to: a model here (ChatModel) or one served elsewhere (a Modal
    run's adapter, see backends/modal_chat.py). adapters: the names `stream(adapter=...)` accepts."""

    adapters: list[str]

    def describe(self) -> str: ...

    def add_checkpoint(self, name: str, path: str) -> None: ...

    def stream(self, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, adapter: str = "default",
               stop: threading.Event | None = None) -> Iterator[str]: ...

    def ask(self, message: str, stream: bool = True, system: str | None = None, **sampling: Any) -> str: ...


class StreamedAnswer(str):
    """The answer text, already shown while it streamed: displaying it again as a cell result would
    print it twice, so its notebook display is empty."""

    def _ipython_display_(self) -> None:
        return None


class TemplateMismatchWarning(UserWarning):
    """The base model's chat template differs from the one the adapter was trained with."""


class ChatModel:
    def __init__(self, model_path: str, adapter_path: str | None = None, device: str | None = None) -> None:
        from peft import PeftModel

        from .core.setup import load_base_model, load_tokenizer, pick_device, pick_precision, quiet_loading

        self.device = device or pick_device()
        self.model_path, self.adapter_path = model_path, adapter_path
        base_tokenizer = load_tokenizer(model_path)
        trained_with = adapter_path if adapter_path and _has_tokenizer(adapter_path) else None
        self.tokenizer = load_tokenizer(trained_with) if trained_with else base_tokenizer
        self.template_note = "same chat template as training"
        if adapter_path and base_tokenizer.chat_template != self.tokenizer.chat_template:
            self.template_note = ("base model's chat template differs from training; "
                                  "using the training template")
            warnings.warn(self.template_note, TemplateMismatchWarning, stacklevel=2)
        with quiet_loading():
            model = load_base_model(model_path, pick_precision("auto", self.device), self.device)
            self.model = PeftModel.from_pretrained(model, adapter_path) if adapter_path else model
        self.model.eval()
        self.adapters = ["default"] if adapter_path else []

    def add_checkpoint(self, name: str, path: str) -> None:
        """Load a checkpoint's adapter beside the final one, to answer with it by name."""
        from .core.setup import quiet_loading

        if name not in self.adapters:
            with quiet_loading():
                self.model.load_adapter(path, adapter_name=name)
            self.adapters.append(name)

    def describe(self) -> str:
        adapter = f" + adapter {self.adapter_path}" if self.adapter_path else " (no adapter)"
        return f"{self.model_path}{adapter} on {self.device}; {self.template_note}"

    def stream(self, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, adapter: str = "default",
               stop: threading.Event | None = None) -> Iterator[str]:
        """Yield text chunks as they are generated. temperature 0 means greedy. adapter: "default" (the
        trained adapter), "base" (the model without it), or a checkpoint name added with add_checkpoint."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        prompt = render_prompt(self.tokenizer, messages)
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stopped = stop or threading.Event()

        class _Stop(StoppingCriteria):
            def __call__(self, *_args: Any, **_kwargs: Any) -> bool:
                return stopped.is_set()

        sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature, "top_p": top_p}
                                    if temperature > 0 else {"do_sample": False})
        kwargs = dict(**encoded, max_new_tokens=max_new_tokens, streamer=streamer,
                      eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                      stopping_criteria=StoppingCriteriaList([_Stop()]), **sampling)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                use_base = adapter == "base" and bool(self.adapters)
                if self.adapters and not use_base:
                    self.model.set_adapter(adapter)
                adapter_off = self.model.disable_adapter() if use_base else contextlib.nullcontext()
                with torch.no_grad(), adapter_off:
                    self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 — re-raised in the caller's thread
                errors.append(exc)
                streamer.on_finalized_text("", stream_end=True)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]

    def ask(self, message: str, stream: bool = True, system: str | None = None, **sampling: Any) -> str:
        """One question; with stream=True the answer is printed as it is generated."""
        return ask(self.stream, message, stream, system, **sampling)


@dataclass
class MultiAdapterModel:
    """A base model with several adapters loaded side by side (peft), for serving many runs at once.
    tokenizers[name] is the tokenizer saved beside that adapter (its training chat template); "__base__"
    is the base model's own, and the name peft uses for rows answered without any adapter."""

    model: Any
    tokenizers: dict[str, Any]
    device: str
    context_length: int


def load_multi_adapter(model_path: str, adapters: dict[str, str],
                       device: str | None = None) -> MultiAdapterModel:
    """The base at model_path plus each adapter directory under its name (names must not contain '.')."""
    from peft import PeftModel

    from .core.setup import load_base_model, load_tokenizer, pick_device, pick_precision, quiet_loading

    device = device or pick_device()
    tokenizers = {"__base__": load_tokenizer(model_path)}
    with quiet_loading():
        model = load_base_model(model_path, pick_precision("auto", device), device)
        for index, (name, path) in enumerate(adapters.items()):
            if index == 0:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
            tokenizers[name] = load_tokenizer(path) if _has_tokenizer(path) else tokenizers["__base__"]
    model.eval()
    config = model.config if not adapters else model.base_model.model.config
    context = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    return MultiAdapterModel(model, tokenizers, device, context)


def _has_tokenizer(directory: str) -> bool:
    return (Path(directory) / "tokenizer_config.json").is_file()


# One chat model in memory at a time: switching runs frees the previous one (training and chat
# should not fight over memory).
_loaded: dict[tuple[str, str | None], ChatModel] = {}


def chat_model(model_path: str, adapter_path: str | None) -> ChatModel:
    key = (model_path, adapter_path)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = ChatModel(model_path, adapter_path)
    return _loaded[key]


def ask(stream_fn: Any, message: str, stream: bool = True, system: str | None = None, **sampling: Any) -> str:
    """One question to any answer source with a `stream(messages, **sampling)`; printed as it comes when
    stream=True (the in-notebook model and an OpenAI-compatible endpoint answer the same way)."""
    messages = (([{"role": "system", "content": system}] if system else [])
                + [{"role": "user", "content": message}])
    chunks = []
    for chunk in stream_fn(messages, **sampling):
        chunks.append(chunk)
        if stream:
            sys.stdout.write(chunk)
            sys.stdout.flush()
    if stream:
        sys.stdout.write("\n")
        return StreamedAnswer("".join(chunks).strip())
    return "".join(chunks).strip()

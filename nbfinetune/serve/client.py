"""Chat with any OpenAI-compatible endpoint — a run served here or on Modal, or the provider an app
uses today — through the same interface as the in-notebook ChatModel, so the chat widget, `%chat`
and the side-by-side comparison treat them alike.

The API key is read from an environment variable when a request is made; it is never stored on the
object, shown, or left in an error message.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class EndpointChatModel:
    """model at base_url (e.g. "https://api.openai.com/v1", "http://127.0.0.1:8000/v1"); the key comes
    from the environment variable api_key_env."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    adapter_path: str | None = None  # no local adapter: the widget offers no base/checkpoint comparison
    adapters: tuple[str, ...] = ()
    timeout_s: float = 120.0
    max_retries: int = 1  # the openai client retries 429 / 5xx / timeouts with exponential back-off
    # USD per million input / output tokens, for nbft.evaluate's cost and nbft.economics (None: unknown)
    usd_per_m_input: float | None = None
    usd_per_m_output: float | None = None

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.base_url}"

    def describe(self) -> str:
        return f"{self.label} (OpenAI-compatible endpoint; key from ${self.api_key_env})"

    def add_checkpoint(self, name: str, path: str) -> None:
        raise NotImplementedError("an endpoint has no checkpoints to compare")

    def _client(self) -> Any:
        try:
            import openai
        except ImportError:
            raise RuntimeError("talking to an OpenAI-compatible endpoint needs the openai package: "
                               "pip install openai") from None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise RuntimeError(f"api_key_env: the environment variable {self.api_key_env} is not set")
        return openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout_s,
                             max_retries=self.max_retries)

    def stream(self, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, adapter: str = "default",
               stop: threading.Event | None = None) -> Iterator[str]:
        import openai

        client = self._client()
        try:
            chunks = client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                    max_tokens=max_new_tokens, temperature=temperature,
                                                    top_p=top_p)
            for chunk in chunks:
                if stop is not None and stop.is_set():
                    chunks.close()
                    return
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except openai.APIError as exc:
            message = _without_key(str(exc), os.environ.get(self.api_key_env, ""))
            raise RuntimeError(f"{self.label}: {message}") from None

    def ask(self, message: str, stream: bool = True, system: str | None = None, **sampling: Any) -> str:
        from ..serving import ask

        return ask(self.stream, message, stream, system, **sampling)


def _without_key(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text

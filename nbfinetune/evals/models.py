"""What `evaluate` can compare: a run (its adapter), a base model, or any OpenAI-compatible endpoint.
All are asked the same way, through the OpenAI API: runs and base models are served on this machine by
our own server (one engine per base model) for the time of the evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..serve.client import EndpointChatModel


@dataclass
class Target:
    label: str
    kind: str  # "endpoint" | "run" | "base"
    identity: dict[str, Any]  # what the answers depend on: the cache key's model part (no secrets)
    endpoint: EndpointChatModel | None = None  # kind "endpoint"
    base_path: str | None = None  # kind "run" / "base"
    adapter_path: str | None = None
    run: Any = None

    @property
    def local(self) -> bool:
        return self.endpoint is None


def resolve(model: Any, store: Any = None) -> Target:
    """A Run, an endpoint (nbft.endpoint(...)), a run id, or a base model name / directory."""
    from ..api import Run
    from ..runs import RunStore

    if isinstance(model, EndpointChatModel):
        return Target(model.model, "endpoint", {"base_url": model.base_url, "model": model.model},
                      endpoint=model)
    if isinstance(model, str):
        store = store or RunStore()
        model = Run(model, store) if model in store.ids() else model
    if isinstance(model, Run):
        if not model.adapter_path:
            raise ValueError(f"models: run {model.id} has no adapter (status: {model.status})")
        from ..core.models import resolve_model

        name = model.config.name or model.id
        # The adapter's files' sizes and times: a resumed run that saved a new adapter gets new answers.
        identity = {"run": model.id, "adapter": model.adapter_path, "files": _stamp(model.adapter_path)}
        return Target(name, "run", identity, base_path=resolve_model(model.config.model),
                      adapter_path=model.adapter_path, run=model)
    if isinstance(model, str):
        from ..core.models import resolve_model

        try:
            path = resolve_model(model)
        except Exception as exc:
            raise ValueError(f"models: {model!r} is neither a run id nor a base model ({exc})") from None
        return Target(model, "base", {"base": path}, base_path=path)
    raise TypeError(f"models: expected a Run, a run id, a base model name or nbft.endpoint(...), "
                    f"got {model!r}")


def _stamp(directory: str) -> list[tuple[str, int, int]]:
    from pathlib import Path

    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in Path(directory).iterdir() if p.is_file())


@dataclass
class Answer:
    output: str | None
    latency_s: float | None
    input_tokens: int | None
    output_tokens: int | None
    error: str | None = None


def ask(client: Any, model: str, messages: list[dict[str, str]], max_tokens: int, temperature: float,
        secret: str = "") -> Answer:
    """One chat completion; a failure (after the client's retries) comes back as the answer's error."""
    import openai

    started = time.perf_counter()
    try:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                               temperature=temperature)
    except openai.APIError as exc:
        message = f"{type(exc).__name__}: {exc}"
        return Answer(None, None, None, None, message.replace(secret, "***") if secret else message)
    latency = time.perf_counter() - started
    usage = reply.usage
    return Answer(reply.choices[0].message.content or "", latency,
                  getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))

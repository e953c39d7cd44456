"""The OpenAI chat-completions wire format: request validation and response shapes (pure, no torch).

Validation errors name the offending field the way OpenAI does (`param`), so a client library shows
the user which argument to fix; the HTTP layer turns an APIError into the JSON error body.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "developer")


class APIError(Exception):
    """An error the client can act on: HTTP status, OpenAI error type and the field at fault."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(name, f"must be a number, got {type(value).__name__}")
    if not low <= value <= high:
        raise bad_request(name, f"must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _message(index: int, message: Any) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(where, "must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in ROLES:
        raise bad_request(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text is meaningful to a text model
        texts = []
        for part in content:
            if (not isinstance(part, dict) or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)):
                raise bad_request(f"{where}.content", "only text content parts are supported")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content", "must be a string")
    return {"role": "system" if role == "developer" else role, "content": content}


def parse_chat_request(body: Any) -> ChatRequest:
    """A validated ChatRequest, or an APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model", "required: a served model name (GET /v1/models lists them)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages", "required: a non-empty list of {role, content} objects")
    parsed = [_message(i, m) for i, m in enumerate(messages)]
    n = body.get("n", 1)
    if n not in (None, 1):
        raise bad_request("n", f"only n=1 is supported, got {n!r}")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise bad_request("max_tokens", f"must be a positive integer, got {max_tokens!r}")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = list(stop)
    else:
        raise bad_request("stop", "must be a string or a list of at most 4 strings")
    if any(not s for s in stops):
        raise bad_request("stop", "stop strings must not be empty")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream", "must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options", "must be an object")
    sampling = Sampling(_number(body, "temperature", 1.0, 0.0, 2.0), _number(body, "top_p", 1.0, 0.0, 1.0))
    if sampling.top_p == 0.0:
        raise bad_request("top_p", "must be greater than 0")
    return ChatRequest(model, parsed, max_tokens, sampling, stops, stream, bool(options.get("include_usage")))


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(cid: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
          usage_: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if usage_ is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                               "finish_reason": finish_reason}]
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def model_list(names: list[tuple[str, str]]) -> dict[str, Any]:
    """names: (model id, owner) pairs."""
    now = int(time.time())
    return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": owner}
                                       for n, owner in names]}

"""The OpenAI-compatible HTTP API over engines: /v1/chat/completions (streamed as server-sent events or
not) and /v1/models, behind a bearer token. Tornado, which Jupyter already brings, runs it on its own
thread and event loop, so a notebook cell returns while the server keeps answering.

Every error is an OpenAI-shaped JSON body; a traceback never reaches the client.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from . import protocol
from .protocol import APIError
from .tokens import token_hash

log = logging.getLogger("nbfinetune.serve")
MAX_BODY_BYTES = 4 * 1024 * 1024  # larger bodies get a 413 JSON error
_SOCKET_BODY_BYTES = 64 * 1024 * 1024  # beyond this tornado drops the connection without a response


@dataclass(frozen=True)
class Route:
    """A served model name: which engine answers it, with which adapter ("__base__": none)."""

    name: str
    engine: Any
    adapter: str
    owner: str


class _Handler(tornado.web.RequestHandler):
    def initialize(self, routes: dict[str, Route], token_sha256: str) -> None:
        self.routes, self.token_sha256 = routes, token_sha256

    def prepare(self) -> None:
        header = self.request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token or not hmac.compare_digest(token_hash(token), self.token_sha256):
            raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def send_api_error(self, error: APIError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.body()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            error = exc
        elif status_code < 500:
            error = APIError(status_code, self._reason or "bad request")
        else:
            error = APIError(500, "internal error while answering; see the server log", type="server_error")
        self.clear()
        self.send_api_error(error)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, APIError):  # client mistakes are not server errors
            super().log_exception(typ, value, tb)


class ModelsHandler(_Handler):
    def get(self) -> None:
        self.finish(protocol.model_list([(r.name, r.owner) for r in self.routes.values()]))


class NotFoundHandler(_Handler):
    def prepare(self) -> None:
        super().prepare()  # the key first: the API's shape is not shown to strangers
        raise APIError(404, f"no such endpoint: {self.request.method} {self.request.path} "
                            "(this server has POST /v1/chat/completions and GET /v1/models)",
                       code="not_found")


class ChatCompletionsHandler(_Handler):
    generation: Any = None

    async def post(self) -> None:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is {len(self.request.body)} bytes; at most "
                                f"{MAX_BODY_BYTES}", code="request_too_large")
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}") from None
        request = protocol.parse_chat_request(body)
        route = self.routes.get(request.model)
        if route is None:
            raise APIError(404, f"model: no served model named {request.model!r}; served: "
                                f"{', '.join(self.routes)}", param="model", code="model_not_found")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()

        def sink(delta: str, finish: str | None) -> None:  # called on the engine thread
            loop.call_soon_threadsafe(queue.put_nowait, (delta, finish))

        self.generation = route.engine.prepare(request, route.adapter, sink)
        route.engine.submit(self.generation)
        cid = protocol.completion_id()
        if request.stream:
            await self._stream(queue, cid, request)
        else:
            text, finish = [], None
            while finish is None:
                delta, finish = await queue.get()
                text.append(delta)
            self._raise_if_failed(finish)
            self.finish(protocol.completion(cid, request.model, "".join(text), finish,
                                            len(self.generation.prompt_ids), len(self.generation.ids)))

    async def _stream(self, queue: asyncio.Queue, cid: str, request: protocol.ChatRequest) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        first = True
        finish = None
        while finish is None:
            delta, finish = await queue.get()
            if first and finish is not None and finish.startswith("error"):
                self._raise_if_failed(finish)  # nothing sent yet: a proper error response
            if finish is not None and finish.startswith("error"):
                failed = APIError(500, "generation failed", type="server_error")
                self._event({"error": failed.body()["error"]})
                break
            if first or delta:
                message = {"role": "assistant", "content": delta} if first else {"content": delta}
                self._event(protocol.chunk(cid, request.model, message))
                first = False
            if finish is not None:
                self._event(protocol.chunk(cid, request.model, {}, finish))
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                self.generation.cancel()
                return
        if request.include_usage:
            self._event(protocol.chunk(cid, request.model, {}, usage_=protocol.usage(
                len(self.generation.prompt_ids), len(self.generation.ids))))
        self.write("data: [DONE]\n\n")
        self.finish()

    def _event(self, body: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(body)}\n\n")

    def _raise_if_failed(self, finish: str) -> None:
        if finish.startswith("error"):
            log.error("generation failed: %s", finish)
            raise APIError(500, "generation failed; see the server log", type="server_error")

    def on_connection_close(self) -> None:
        if self.generation is not None:
            self.generation.cancel()


def make_app(routes: dict[str, Route], token_sha256: str) -> tornado.web.Application:
    args = {"routes": routes, "token_sha256": token_sha256}
    return tornado.web.Application([
        (r"/v1/chat/completions", ChatCompletionsHandler, args),
        (r"/v1/models", ModelsHandler, args),
    ], default_handler_class=NotFoundHandler, default_handler_args=args)


class HTTPThread:
    """The app on 127.0.0.1 (or host), on its own event loop in a daemon thread."""

    def __init__(self, app: tornado.web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        sockets = tornado.netutil.bind_sockets(port, host)
        self.port = sockets[0].getsockname()[1]
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._server: tornado.httpserver.HTTPServer | None = None

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = tornado.httpserver.HTTPServer(app, max_body_size=_SOCKET_BODY_BYTES)
            self._server.add_sockets(sockets)
            self._started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="nbfinetune-serve-http", daemon=True)
        self._thread.start()
        self._started.wait()

    def stop(self) -> None:
        def shut() -> None:
            if self._server is not None:
                self._server.stop()
            self._loop.stop()

        if self._loop.is_running():
            self._loop.call_soon_threadsafe(shut)
            self._thread.join(timeout=10)

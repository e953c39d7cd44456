"""Web endpoints in the fake: a deployed web method gets a URL as on Modal (in its handle metadata, which
is where `get_web_url()` reads it), and requests to that URL reach a stand-in registered by the test.

Modal's URL is `https://<workspace>--<label>.modal.run`, the label made of app, class and method names;
here it is `<fake http>/web/<label>` on loopback. Nothing of Modal's HTTP layer (its cold-start holding,
its 303 redirects for long requests) is imitated: a label with no stand-in answers 404 as an undeployed
endpoint does."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from modal_proto import api_pb2

if TYPE_CHECKING:
    from aiohttp import web

    from .server import FakeModal

WebHandler = Callable[["web.Request", str], Awaitable["web.StreamResponse"]]


def web_label(app_name: str, function_name: str) -> str:
    """Modal's default label: app and function (for a method: class and method) names, lower case."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{app_name}-{function_name}".lower()).strip("-")[:63]


def web_url(fake: FakeModal, app_name: str, function_name: str) -> str:
    return f"{fake.blob_url}/web/{web_label(app_name, function_name)}"


def add_web_urls(fake: FakeModal, metadata: api_pb2.FunctionHandleMetadata, pre: Any) -> None:
    """Give each web method of a class (and a web function itself) its URL, as Modal's FunctionPrecreate,
    FunctionCreate and FunctionGet answers do."""
    if pre is None:
        return
    app_name = fake.app_names.get(getattr(pre, "app_id", ""), "")
    class_name = metadata.function_name.removesuffix(".*")
    for method, definition in pre.method_definitions.items():
        if definition.webhook_config.type != api_pb2.WEBHOOK_TYPE_UNSPECIFIED:
            url = web_url(fake, app_name, f"{class_name}-{method}")
            metadata.method_handle_metadata[method].web_url = url
    if pre.HasField("webhook_config") and pre.webhook_config.type != api_pb2.WEBHOOK_TYPE_UNSPECIFIED:
        metadata.web_url = web_url(fake, app_name, metadata.function_name)


def web_handlers(fake: FakeModal) -> dict[str, WebHandler]:
    """label → the stand-in answering that endpoint (the test registers it)."""
    return fake.__dict__.setdefault("web_handlers", {})


def web_routes(fake: FakeModal) -> list:
    from aiohttp import web

    async def endpoint(request: web.Request) -> web.StreamResponse:
        handler = web_handlers(fake).get(request.match_info["label"])
        if handler is None:
            return web.Response(status=404, text="modal-http: app for invoked web endpoint is stopped")
        return await handler(request, "/" + request.match_info["tail"])

    return [web.route("*", "/web/{label}/{tail:.*}", endpoint)]

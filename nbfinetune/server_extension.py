"""The Jupyter server extension's entry point: the REST handlers (server.py, which reads the store only) wired
to the backends' cancel. This module is where the two meet, at the top of the layers."""

from __future__ import annotations

from typing import Any

from .backends import get_backend
from .runs import RunStore
from .server import API, handlers


def cancel_run(run_id: str, store: RunStore, hard: bool) -> None:
    """The backend that ran it cancels it (a local process group, a Modal call)."""
    get_backend(store.config(run_id).get("backend", "local")).cancel(run_id, store, hard=hard)


def _load_jupyter_server_extension(server_app: Any) -> None:
    web_app = server_app.web_app
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"], cancel=cancel_run))
    server_app.log.info("nbfinetune: REST API at /%s", API)

"""Jupyter server extension: an authenticated REST API over the RunStore, for the JupyterLab sidebar.

    GET  /nbfinetune/api/runs                          every run's summary, newest first
    GET  /nbfinetune/api/runs/<id>                     one run: summary + config
    GET  /nbfinetune/api/runs/<id>/events?since=N&limit=M   events after seq N (paged)
    POST /nbfinetune/api/runs/<id>/cancel              graceful cancel (body {"hard": true} to kill)
    DELETE /nbfinetune/api/runs/<id>                   delete a run (409 while it is running)

Every handler requires Jupyter's authentication. Imports no torch and no backend: it reads run directories,
and cancels through the function it is given (server_extension.py wires the backends' cancel in).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from .events import redact
from .runs import RunDamaged, RunIsRunning, RunNotFound, RunStore, validate_run_id

API = "nbfinetune/api"
MAX_PAGE = 1000


# cancel(run_id, store, hard): ask the run's backend to stop it.
Cancel = Callable[[str, RunStore, bool], None]


class _RunsHandler(APIHandler):
    def initialize(self, store: RunStore | None = None, cancel: Cancel | None = None) -> None:
        self._store = store
        self._cancel = cancel

    @property
    def store(self) -> RunStore:
        # Read per request, so NBFINETUNE_HOME set for the server process applies.
        return self._store or RunStore()

    def run_dir(self, run_id: str) -> str:
        try:
            validate_run_id(run_id)
        except ValueError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        try:
            self.store.require(run_id)
        except RunNotFound:
            raise tornado.web.HTTPError(404, f"no run {run_id!r}") from None
        return run_id

    def write_json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(redact(json.dumps(_finite(value), default=str, allow_nan=False)))


class RunListHandler(_RunsHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        runs = [summary.to_dict() for summary in reversed(self.store.list())]
        self.write_json({"runs": runs})


class RunHandler(_RunsHandler):
    @tornado.web.authenticated
    def get(self, run_id: str) -> None:
        run_id = self.run_dir(run_id)
        try:
            config = self.store.config(run_id)
        except RunDamaged:
            config = None  # the summary says why (status "damaged")
        self.write_json({"run": self.store.summary(run_id).to_dict(), "config": config})

    @tornado.web.authenticated
    def delete(self, run_id: str) -> None:
        run_id = self.run_dir(run_id)
        try:
            # Liveness as the store sees it (the writer lock): the server imports no backend.
            self.store.delete(run_id)
        except RunIsRunning as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        self.write_json({"run_id": run_id, "deleted": True})


class EventsHandler(_RunsHandler):
    @tornado.web.authenticated
    def get(self, run_id: str) -> None:
        run_id = self.run_dir(run_id)
        try:
            since = int(self.get_query_argument("since", "0"))
            limit = min(MAX_PAGE, int(self.get_query_argument("limit", str(MAX_PAGE))))
        except ValueError:
            raise tornado.web.HTTPError(400, "since and limit must be integers") from None
        if since < 0 or limit < 1:
            raise tornado.web.HTTPError(400, "since must be >= 0 and limit >= 1")
        page = self.store.events_page(run_id, since, limit)
        events = page.events
        self.write_json({"events": [e.to_dict() for e in events],
                         "next_since": events[-1].seq if events else since, "more": page.more,
                         "problems": [{"line": n, "message": m} for n, m in page.problems]})


class CancelHandler(_RunsHandler):
    @tornado.web.authenticated
    def post(self, run_id: str) -> None:
        run_id = self.run_dir(run_id)
        try:
            body = json.loads(self.request.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise tornado.web.HTTPError(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, 'the body must be a JSON object, e.g. {"hard": true}')
        if self._cancel is None:
            raise tornado.web.HTTPError(501, "this server was started without a way to cancel runs")
        try:
            self._cancel(run_id, self.store, bool(body.get("hard")))
        except RunDamaged as exc:
            raise tornado.web.HTTPError(409, f"run {run_id} is damaged: {exc}") from None
        self.write_json({"run_id": run_id, "cancelling": True, "hard": bool(body.get("hard"))})


def _finite(value: Any) -> Any:
    """NaN and infinities (which an events file may hold) as null: browsers' JSON.parse rejects them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_ID = r"(?P<run_id>[^/]+)"


def handlers(base_url: str, store: RunStore | None = None,
             cancel: Cancel | None = None) -> list[tuple[str, type, dict[str, Any]]]:
    options = {"store": store, "cancel": cancel}
    return [
        (url_path_join(base_url, API, "runs") + "/?", RunListHandler, options),
        (url_path_join(base_url, API, "runs", _ID) + "/?", RunHandler, options),
        (url_path_join(base_url, API, "runs", _ID, "events") + "/?", EventsHandler, options),
        (url_path_join(base_url, API, "runs", _ID, "cancel") + "/?", CancelHandler, options),
    ]

"""Serve runs on this machine: one engine per base model (its runs' adapters side by side), one HTTP
server in front, started from a notebook cell or the CLI."""

from __future__ import annotations

import html
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .tokens import new_token, record, token_hash

_INTERNAL = re.compile(r"[^A-Za-z0-9_]")


@dataclass
class LocalServer:
    """A running server. `base_url` and `api_key` go straight into `openai.OpenAI(...)`; the key is
    printed once when the server starts and lives only in this object (the run stores its hash)."""

    base_url: str
    models: list[str]
    api_key: str = field(repr=False)
    _http: Any = field(repr=False, default=None)
    _engines: list[Any] = field(repr=False, default_factory=list)
    _routes: dict[str, Any] = field(repr=False, default_factory=dict)

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
        for engine in self._engines:
            engine.close()
        self._http, self._engines = None, []

    @property
    def running(self) -> bool:
        return self._http is not None

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "serving" if self.running else "stopped"
        return f"<LocalServer {state} {self.base_url} models={self.models}>"

    def _repr_html_(self) -> str:
        state = "serving" if self.running else "stopped"
        names = ", ".join(f"<code>{html.escape(m)}</code>" for m in self.models)
        return (f"<div>OpenAI-compatible API {state} at <code>{html.escape(self.base_url)}</code> · models: {names}"
                "<br><span style='color:#555'>client = OpenAI(base_url=server.base_url, api_key=server.api_key)"
                "</span></div>")


def serve_runs(runs: list[Any], host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
               aliases: dict[str, str] | None = None, max_batch: int = 32, batch_window_s: float = 0.005,
               max_waiting: int = 256, quiet: bool = False, device: str | None = None) -> LocalServer:
    """Serve each run's adapter under its run id (and its alias: `aliases[run_id]` or the run's name),
    and each base model under the name the runs were trained from. api_key: reuse a key you keep
    (e.g. from an environment variable); by default a new one is generated and printed once."""
    from ..core.models import resolve_model
    from ..serving import load_multi_adapter
    from .engine import BASE, Engine
    from .http import HTTPThread, Route, make_app

    if not runs:
        raise ValueError("serve: name at least one run")
    aliases = dict(aliases or {})
    by_base: dict[str, list[Any]] = {}
    for run in runs:
        if not run.adapter_path:
            raise RuntimeError(f"run {run.id} has no adapter yet (status: {run.status}); wait for it to finish")
        by_base.setdefault(run.config.model, []).append(run)
    routes: dict[str, Route] = {}
    engines = []
    for base_name, base_runs in by_base.items():
        adapters = {_INTERNAL.sub("_", f"run_{run.id}"): run.adapter_path for run in base_runs}
        loaded = load_multi_adapter(resolve_model(base_name), adapters, device)
        engine = Engine(loaded, max_batch=max_batch, batch_window_s=batch_window_s, max_waiting=max_waiting)
        engines.append(engine)
        routes[base_name] = Route(base_name, engine, BASE, "base")
        for run, adapter in zip(base_runs, adapters):
            for name in dict.fromkeys([run.id, aliases.get(run.id) or run.config.name or run.id]):
                if name in routes:
                    raise ValueError(f"aliases: the model name {name!r} is used twice")
                routes[name] = Route(name, engine, adapter, f"run {run.id}")
    key = api_key or new_token()
    digest = token_hash(key)
    try:
        http = HTTPThread(make_app(routes, digest), host, port)
    except BaseException:
        for engine in engines:
            engine.close()
        raise
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    server = LocalServer(f"http://{shown_host}:{http.port}/v1", list(routes), key, http, engines, routes)
    for run in runs:
        record(run.path, digest, server.base_url, server.models)
    if not quiet:
        print(f"OpenAI-compatible API at {server.base_url} · models: {', '.join(server.models)}")
        if api_key is None:
            print(f"API key (shown once, stored only as a hash): {key}", file=sys.stdout)
    return server

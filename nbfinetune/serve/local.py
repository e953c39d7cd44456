"""Serve runs on this machine: one engine per base model (its runs' adapters side by side), one HTTP
server in front, started from a notebook cell or the CLI."""

from __future__ import annotations

import html
import re
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
        return (f"<div>OpenAI-compatible API {state} at <code>{html.escape(self.base_url)}</code> · "
                f"models: {names}<br><span style='color:#555'>"
                "client = OpenAI(base_url=server.base_url, api_key=server.api_key)</span></div>")


@dataclass
class BaseSpec:
    """One base model to load: the name it is served under, its directory, and its adapters as
    (model names, adapter directory, owner) — the first name is the adapter's id."""

    name: str
    path: str
    adapters: list[tuple[list[str], str, str]] = field(default_factory=list)


def serve_runs(runs: list[Any], host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
               aliases: dict[str, str] | None = None, quiet: bool = False, show_key: bool = True,
               **engine_options: Any) -> LocalServer:
    """Serve each run's adapter under its run id (and its alias: `aliases[run_id]` or the run's name),
    and each base model under the name the runs were trained from. api_key: reuse a key you keep
    (e.g. from an environment variable); by default a new one is generated and printed once (unless
    show_key is False: in a notebook, whose outputs are saved to a file, the API passes False).
    engine_options: max_batch=32, batch_window_s=0.005, max_waiting=256, device."""
    from ..core.models import resolve_model

    if not runs:
        raise ValueError("serve: name at least one run")
    aliases = dict(aliases or {})
    specs: dict[str, BaseSpec] = {}
    for run in runs:
        if not run.adapter_path:
            raise RuntimeError(f"run {run.id} has no adapter yet (status: {run.status}); wait for it to "
                               "finish")
        base = run.config.model
        spec = specs.setdefault(base, BaseSpec(base, resolve_model(base)))
        names = list(dict.fromkeys([run.id, aliases.get(run.id) or run.config.name or run.id]))
        spec.adapters.append((names, run.adapter_path, f"run {run.id}"))
    server = serve_models(list(specs.values()), host, port, api_key, quiet, show_key=show_key,
                          **engine_options)
    for run in runs:
        record(run.path, token_hash(server.api_key), server.base_url, server.models)
    return server


def serve_models(specs: list[BaseSpec], host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 quiet: bool = False, show_key: bool = True, max_batch: int = 32,
                 batch_window_s: float = 0.005, max_waiting: int = 256,
                 device: str | None = None) -> LocalServer:
    """Load each base with its adapters (one engine per base) and start the HTTP server in front."""
    from ..serving import load_multi_adapter
    from .engine import BASE, Engine
    from .http import HTTPThread, Route, make_app

    routes: dict[str, Route] = {}
    engines = []

    def add(name: str, route: Route) -> None:
        if name in routes:
            raise ValueError(f"aliases: the model name {name!r} is used twice")
        routes[name] = route

    try:
        for spec in specs:
            # The position keeps internal names unique: two run ids may differ only where _INTERNAL
            # replaces characters.
            adapters = {_INTERNAL.sub("_", f"adapter{i}_{names[0]}"): path
                        for i, (names, path, _) in enumerate(spec.adapters)}
            loaded = load_multi_adapter(spec.path, adapters, device)
            engine = Engine(loaded, max_batch=max_batch, batch_window_s=batch_window_s,
                            max_waiting=max_waiting)
            engines.append(engine)
            add(spec.name, Route(spec.name, engine, BASE, "base"))
            for (names, _, owner), adapter in zip(spec.adapters, adapters, strict=True):
                for name in names:
                    add(name, Route(name, engine, adapter, owner))
        key = api_key or new_token()
        http = HTTPThread(make_app(routes, token_hash(key)), host, port)
    except BaseException:
        for engine in engines:
            engine.close()
        raise
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    server = LocalServer(f"http://{shown_host}:{http.port}/v1", list(routes), key, http, engines, routes)
    if not quiet:
        print(f"OpenAI-compatible API at {server.base_url} · models: {', '.join(server.models)}", flush=True)
        if api_key is None and show_key:
            print(f"API key (shown once, stored only as a hash): {key}", flush=True)
        elif api_key is None:
            print("API key: in server.api_key (not printed: notebook outputs are saved to disk)")
    return server

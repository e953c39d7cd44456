"""The Python API — the product. Magics, widgets and the CLI are thin layers over these functions."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import get_backend
from .backends.base import Backend
from .config import RunConfig
from .events import Event
from .runs import RunIsRunning as RunIsRunning  # re-exported: api.RunIsRunning
from .runs import RunStore, RunSummary
from .settings import build_config as build_config  # re-exported: finetune's keywords are build_config's


class Run:
    """A handle on one run. Everything it shows is read from the run's stored events."""

    def __init__(self, run_id: str, store: RunStore | None = None, backend: Backend | None = None) -> None:
        self.store = store or RunStore()
        self.store.require(run_id)
        self.id = run_id
        self._backend = backend
        self._dashboard: Any = None

    # --- state -----------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.store.path(self.id)

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.store.config(self.id))

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = get_backend(self.store.config(self.id).get("backend", "local"))
        return self._backend

    def summary(self) -> RunSummary:
        return self.store.summary(self.id)

    @property
    def label(self) -> str:
        """The run's name where it has one, else its id: what charts and headers call it."""
        return self.store.config(self.id).get("name") or self.id

    @property
    def status(self) -> str:
        return self.summary().status

    @property
    def adapter_path(self) -> str | None:
        return self.summary().adapter_path

    def events(self, since_seq: int = 0) -> list[Event]:
        return self.store.events(self.id, since_seq).events

    def follow(self, since_seq: int = 0) -> Iterator[Event]:
        return self.store.follow(self.id, since_seq,
                                 worker_alive=lambda: self.backend.is_alive(self.id, self.store))

    # --- actions ---------------------------------------------------------------------------------
    def wait(self, timeout: float | None = None, progress: bool | None = None) -> RunSummary:
        """Block until the run ends (or timeout seconds pass); shows a progress bar unless a dashboard
        does."""
        from tqdm.auto import tqdm

        dashboard = self._dashboard or _DASHBOARDS.get(self.id)
        # A dashboard of this run anywhere in the notebook (e.g. the one `resume` or `attach` showed)
        # already shows progress: a second bar under it would only repeat it.
        show = progress if progress is not None else dashboard is None
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        for state in self.store.watch(
                self.id, should_stop=lambda: deadline is not None and time.monotonic() > deadline,
                worker_alive=lambda: self.backend.is_alive(self.id, self.store)):
            # Once the run has started, even when the first read already holds its end (a short run read
            # in one poll, or a finished one being attached): the bar then shows the whole run at once.
            if show and bar is None and (state.status == "running" or state.total_steps is not None):
                bar = tqdm(total=state.total_steps, initial=state.step, desc=f"run {self.id}", unit="step")
            if bar is not None:
                bar.n = state.step
                if state.last_loss is not None:
                    bar.set_postfix(loss=f"{state.last_loss:.4f}", refresh=False)
                bar.refresh()
        if bar is not None:
            bar.close()
        summary = self.summary()
        if dashboard is not None:
            # From the waiting cell's thread, so notebook runners that only listen to the running cell
            # (nbclient, `make demo`) also store the final static snapshot under the dashboard.
            dashboard.poll()
            dashboard.redraw()
            dashboard.refresh_static()
        if show or dashboard is not None:
            print(summary.describe())
        return summary

    def cancel(self, hard: bool = False) -> None:
        self.backend.cancel(self.id, self.store, hard=hard)

    def delete(self) -> None:
        """Remove the run's directory (events, adapter, checkpoints); refused while the run is running."""
        delete(self.id, self.store)

    def resume(self) -> Run:
        """Continue a cancelled or failed run from its latest checkpoint (adapter, optimizer, scheduler and
        data position); the loss curve continues in the same event stream. A finished run is not resumed:
        its adapter is its result, and retraining could only replace it."""
        summary = self.summary()
        if summary.status == "finished":
            raise RuntimeError(
                f"run {self.id} has finished ({summary.step} steps); resume continues only cancelled, failed "
                f"or lost runs. To train more, launch a new run with more steps; its adapter stays at "
                f"{summary.adapter_path} for chat and export")
        self.backend.resume(self.id, self.store)
        if self._dashboard is not None:
            self._dashboard.close()
            self._dashboard = None
        return self

    def export(self, out_dir: str | Path | None = None) -> dict[str, Any]:
        """Merge the adapter into the base model and save a standalone model (with tokenizer and chat
        template), verified by reloading it. Returns {"path", "max_logit_difference"}."""
        from .core.export import export_merged
        from .core.models import resolve_model

        adapter = self.adapter_path
        if not adapter:
            raise RuntimeError(f"run {self.id} has no adapter yet (status: {self.status})")
        out = Path(out_dir).expanduser().absolute() if out_dir else self.path / "merged"
        return export_merged(resolve_model(self.config.model), adapter, out,
                             quantization=self.config.train.quantization)

    def dashboard(self) -> Any:
        from .widgets.dashboard import Dashboard

        self._dashboard = Dashboard(self)
        _DASHBOARDS[self.id] = self._dashboard
        return self._dashboard

    def plot(self) -> Any:
        """A static chart of the run's curves: it stays in the saved notebook without a kernel.
        `.figure` is the plotly Figure, to restyle or export."""
        from .widgets.charts import curves_chart

        return curves_chart(self.events(), title=f"run {self.label}")

    def chat(self, message: str | None = None, stream: bool = True, compare: list[Any] | None = None,
             **sampling: Any) -> Any:
        """Ask the fine-tuned model (streamed to the output); without a message, open the chat widget.
        compare: other answer sources side by side, e.g. [nbft.endpoint(url, "gpt-4o-mini")]."""
        model = self.backend.chat_model(self)
        others = {source.label: source for source in compare or []}
        if message is None:
            from .widgets.chat import ChatWidget

            checkpoints = {p.name: str(p) for p in sorted((self.path / "checkpoints").glob("step-*"),
                                                           key=lambda p: int(p.name.split("-")[1]))}
            widget = ChatWidget(model, checkpoints, name=self.id, others=others)
            if others:
                widget.compare_with.value = next(iter(others))
            return widget
        return _ask_side_by_side(model, compare, message, stream, **sampling)

    def serve(self, backend: str = "local", **options: Any) -> Any:
        """An OpenAI-compatible API for this run's adapter (model name: the run id) and its base model;
        see `serve()` for the options. Prints the URL and a new API key once."""
        return serve([self], backend=backend, store=self.store, **options)

    def __repr__(self) -> str:
        return f"<Run {self.id}: {self.summary().describe()}>"


# The latest dashboard made for each run id, whichever Run object made it (weak: closed ones go).
_DASHBOARDS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def finetune(config: RunConfig | dict[str, Any] | str | None = None, *, display: bool | None = None,
             store: RunStore | None = None, **settings: Any) -> Run:
    """Launch a LoRA fine-tune and return its Run at once; the run trains in the background.

    finetune(data="my.jsonl", model="HuggingFaceTB/SmolLM2-135M-Instruct", steps=100, lr=2e-4, r=16)

    data may also be a pandas DataFrame, a datasets.Dataset/DatasetDict or a list of dicts.
    """
    if "data" in settings or "eval_data" in settings:
        from .data.materialize import materialize

        settings["data"], settings["eval_data"] = materialize(settings.get("data"), settings.get("eval_data"))
    resolved = build_config(config, **settings)
    from .launch_checks import check_before_launch

    check_before_launch(resolved)  # a wrong path, format or model fails here, not in the worker
    backend = get_backend(resolved.backend)
    backend.check_launch(resolved)  # e.g. a run that cannot fit its GPU, before a GPU second is billed
    store = store or RunStore()
    run = Run(backend.launch(resolved, store), store, backend)
    if display if display is not None else _in_notebook():
        from IPython.display import display as show

        show(run.dashboard())
    return run


def attach(run_id: str | None = None, *, display: bool | None = None, store: RunStore | None = None) -> Run:
    """Reattach to a run (the latest when no id is given): replays its events, then follows live."""
    store = store or RunStore()
    run_id = run_id or store.latest()
    if run_id is None:
        raise LookupError(f"no runs yet in {store.root}")
    run = Run(run_id, store)
    if display if display is not None else _in_notebook():
        from IPython.display import display as show

        show(run.dashboard())
    return run


RESUMABLE = ("cancelled", "failed", "lost")


def latest_resumable(store: RunStore | None = None) -> str:
    """The newest run that resume can continue (cancelled, failed or lost) — never a finished one."""
    store = store or RunStore()
    for summary in reversed(store.list()):
        if summary.status in RESUMABLE:
            return summary.run_id
    raise LookupError(f"no cancelled, failed or lost run to resume in {store.root} (finished runs are not "
                      "resumed: launch a new run with more steps instead)")


@dataclass
class RunList:
    runs: list[RunSummary]

    def __repr__(self) -> str:
        if not self.runs:
            return "no runs yet"
        width = max(len(s.run_id) for s in self.runs)  # ids never wrap or get cut
        lines = [f"{'run id':<{width}}  {'name':<16} {'status':<10} {'step':>9} {'loss':>8}  {'data':<24} "
                 "model / error"]
        for s in self.runs:
            step = f"{s.step}/{s.total_steps or '?'}"
            loss = f"{s.last_loss:.4f}" if s.last_loss is not None else "-"
            tail = f"error: {_short(s.error, 60)}" if s.error else str(s.model)
            lines.append(f"{s.run_id:<{width}}  {_short(s.name or '', 16):<16} {s.status:<10} {step:>9} "
                         f"{loss:>8}  {_short(_data_name(s.data), 24):<24} {tail}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        nowrap = "style='white-space:nowrap'"
        rows = "".join(
            f"<tr><td {nowrap}><code>{escape(s.run_id)}</code></td><td>{escape(s.name or '')}</td>"
            f"<td>{escape(s.status)}</td><td {nowrap}>{s.step}/{s.total_steps or '?'}</td>"
            f"<td>{'' if s.last_loss is None else f'{s.last_loss:.4f}'}</td>"
            f"<td title='{escape(str(s.data or ''))}'>{escape(_data_name(s.data))}</td>"
            f"<td>{escape(str(s.model))}</td><td>{escape(str(s.adapter_path or ''))}</td>"
            f"<td style='color:#dc3545'>{escape(s.error or '')}</td></tr>"
            for s in self.runs)
        return ("<table><thead><tr><th>run</th><th>name</th><th>status</th><th>step</th><th>loss</th>"
                f"<th>data</th><th>model</th><th>adapter</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>")

    def __len__(self) -> int:
        return len(self.runs)


def _data_name(path: str | None) -> str:
    return Path(path).name if path else ""


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def launcher(**settings: Any) -> Any:
    """The launcher widget: data pre-flight, settings, estimate, Launch (which turns into the dashboard).
    settings: build_config's keywords, the launcher's starting values."""
    from .widgets.launcher import Launcher

    return Launcher(build_config(**settings) if settings else None,
                    launch=lambda config: finetune(config, display=False))


def compare(run_ids: list[str | Run], store: RunStore | None = None) -> Any:
    """Overlay several runs' curves in one figure, with a DataFrame (`.table`) of settings and final
    metrics."""
    from .widgets.compare import Comparison

    store = store or RunStore()
    return Comparison([r if isinstance(r, Run) else Run(r, store) for r in run_ids])


def preflight(data: Any = None, model: str | None = None, max_seq_len: int = 512) -> Any:
    """The pre-flight view of a dataset: format, row problems, token lengths, rendered examples."""
    from .widgets.preflight import Preflight

    return Preflight(data, model, max_seq_len)


def serve(run_ids: list[str | Run] | None = None, backend: str = "local", *, store: RunStore | None = None,
          **options: Any) -> Any:
    """Serve runs' adapters (and their base models) through one OpenAI-compatible API; the latest run
    when none is named. local options: host="127.0.0.1", port=0 (a free one), api_key=None (a new key,
    printed once), aliases={run_id: name}. Returns the server: `.base_url`, `.api_key`, `.stop()`.

    server = nbft.serve(["run-a", "run-b"]); OpenAI(base_url=server.base_url, api_key=server.api_key)
    """
    store = store or RunStore()
    if not run_ids:
        latest = store.latest()
        if latest is None:
            raise LookupError(f"no runs yet in {store.root}")
        run_ids = [latest]
    runs_ = [r if isinstance(r, Run) else Run(r, store) for r in run_ids]
    try:
        target = get_backend(backend)
    except ValueError:
        raise ValueError(f"backend: 'local' or 'modal', got {backend!r}") from None
    # A notebook saves its outputs to a file: there a new key stays in `server.api_key` only.
    return target.serve(runs_, **({"show_key": not _in_notebook()} | options))


def endpoint(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", *,
             prices: tuple[float, float] | None = None, **options: Any) -> Any:
    """Any OpenAI-compatible endpoint as a chat source: `.ask(message)`, `chat(endpoint)` for the widget,
    or beside a run: `run.chat(compare=[endpoint])`; a model in `evaluate`, or a `judge`. The key is read
    from api_key_env, never shown. prices: USD per million (input, output) tokens. options: timeout_s,
    max_retries."""
    from .serve.client import EndpointChatModel

    usd_in, usd_out = prices if prices is not None else (None, None)
    return EndpointChatModel(base_url, model, api_key_env, usd_per_m_input=usd_in, usd_per_m_output=usd_out,
                             **options)


def chat(source: Any, message: str | None = None, stream: bool = True, compare: list[Any] | None = None,
         **sampling: Any) -> Any:
    """Chat with an endpoint (see `endpoint`) the way run.chat does with a run."""
    if message is not None:
        return _ask_side_by_side(source, compare, message, stream, **sampling)
    from .widgets.chat import ChatWidget

    others = {other.label: other for other in compare or []}
    widget = ChatWidget(source, name="endpoint", others=others)
    if others:
        widget.compare_with.value = next(iter(others))
    return widget


def _ask_side_by_side(model: Any, compare: list[Any] | None, message: str, stream: bool,
                      **sampling: Any) -> Any:
    """The model's answer; each compared source's answer is printed after it (stream) or, without
    streaming, all answers come back as {label: text}."""
    answer = model.ask(message, stream=stream, **sampling)
    if not compare:
        return answer
    answers = {"fine-tuned": answer}
    for other in compare:
        if stream:
            print(f"--- {other.label}")
        answers[other.label] = other.ask(message, stream=stream, **sampling)
    return answer if stream else answers


def runs(store: RunStore | None = None) -> RunList:
    return RunList((store or RunStore()).list())


def delete(run_id: str | Run, store: RunStore | None = None) -> Path:
    """Delete a run and everything in its directory; returns the path removed. A running run must be
    cancelled first (RunIsRunning)."""
    run = run_id if isinstance(run_id, Run) else Run(run_id, store or RunStore())
    path = run.path
    run.store.delete(run.id, alive=run.backend.is_alive(run.id, run.store))  # RunIsRunning while it runs
    dashboard = _DASHBOARDS.pop(run.id, None)
    if dashboard is not None:
        dashboard.close()
    return path


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def try_rewards(rewards: list[Any], data: Any = "sample:people", *, model: str | None = None,
                prompts: int = 4, n: int = 4, max_new_tokens: int = 64, temperature: float = 1.0,
                seed: int = 0) -> Any:
    """Sample `n` completions from the base model for the first `prompts` rows of a prompts dataset and score
    each with every reward — to check the rewards before training. Returns a table (rows of dicts)."""
    from .core.trial import reward_trial
    from .data.materialize import materialize

    data, _ = materialize(data, None)
    config = build_config(data=data, model=model, method="grpo", rewards=list(rewards))
    return reward_trial(config, prompts, n, max_new_tokens, temperature, seed)

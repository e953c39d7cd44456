"""RunState: the one fold of a run's events. Stdlib only (the server extension imports it without torch).

`RunState.apply(event)` is the only place that knows what events mean. Every view is a view of a
RunState: the run list's `RunSummary`, the dashboard, the CLI, the REST API, the sweep overlay.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .events import Event, FinishedSummary, as_count, as_number, as_scores, as_text
from .metrics import USAGE_COUNTS
from .tail import EventTail

LIVE = ("pending", "running")
ENDED = ("finished", "failed", "cancelled")
SPARK_POINTS = 40


SMOOTHING = 0.8  # exponential moving average weight, like TensorBoard's default slider
# Method figures drawn beside the loss when a run reports them (DPO, GRPO): event field -> trace name.
EXTRA_SERIES = {"reward_margin": "reward margin", "reward_accuracy": "reward accuracy",
                "eval_reward_margin": "eval reward margin", "eval_reward_accuracy": "eval reward accuracy",
                "reward": "reward (mean)", "kl": "KL to base"}


@dataclass
class Curves:
    """A run's chart series, folded from the same events by RunState.apply (views that draw ask for them)."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    best_step: int | None = None  # early stopping: the evaluation whose adapter the run kept
    # field -> (steps, values), for the EXTRA_SERIES a run reports
    extra: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    def add(self, event: Event) -> bool:
        """Fold one event in; True when a curve changed."""
        if event.type == "step":
            if self.steps and event["step"] <= self.steps[-1]:
                self._truncate(event["step"])  # a resumed run re-reports steps: keep the newest
            self.steps.append(event["step"])
            self.loss.append(event["loss"])
            previous = self.smoothed[-1] if self.smoothed else event["loss"]
            self.smoothed.append(SMOOTHING * previous + (1 - SMOOTHING) * event["loss"])
            self.lr.append(event["lr"])
            self._add_extra(event)
            return True
        if event.type == "eval":
            changed = self._add_extra(event)
            if event.get("eval_loss") is not None:
                self.eval_steps.append(event["step"])
                self.eval_loss.append(event["eval_loss"])
                changed = True
            if changed:
                return True
        if event.type == "finished":
            best_step = FinishedSummary.from_dict(event.get("summary")).best_step
            if best_step is not None:
                self.best_step = best_step
                return True
        return False

    def thinned(self, points: int) -> Curves:
        """At most `points` train points (evenly strided, the last kept); evaluations all kept."""
        if len(self.steps) <= points:
            return self
        stride = len(self.steps) / points
        keep = sorted({int(i * stride) for i in range(points)} | {len(self.steps) - 1})
        return Curves([self.steps[i] for i in keep], [self.loss[i] for i in keep],
                      [self.smoothed[i] for i in keep], [self.lr[i] for i in keep], self.eval_steps,
                      self.eval_loss, self.best_step, self.extra)

    def _add_extra(self, event: Event) -> bool:
        found = False
        for name in EXTRA_SERIES:
            value = event.get(name)
            if isinstance(value, (int, float)):
                steps, values = self.extra.setdefault(name, ([], []))
                steps.append(event["step"])
                values.append(float(value))
                found = True
        return found

    def _truncate(self, step: int) -> None:
        keep = sum(1 for s in self.steps if s < step)
        for series in (self.steps, self.loss, self.smoothed, self.lr):
            del series[keep:]
        for steps, values in self.extra.values():
            kept = sum(1 for s in steps if s < step)
            del steps[kept:], values[kept:]

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> Curves:
        curves = cls()
        for event in events:
            curves.add(event)
        return curves


@dataclass
class RunState:
    """Everything known about a run from its events (plus the few settings views show beside them)."""

    run_id: str = ""
    name: str | None = None
    model: str | None = None
    data: str | None = None
    backend: str | None = None
    # Recorded at launch by the backend (None where nothing is billed): cost = rate × time.
    usd_per_hour: float | None = None
    curves: Curves | None = None

    status: str = "pending"
    step: int = 0
    total_steps: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    losses: list[float] = field(default_factory=list)
    tokens_per_s: float | None = None
    eta_s: float | None = None
    eval_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    base_metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    # The LLM judge's calls, tokens and cost over every evaluation ({} when no metric counts its work).
    judge: dict[str, Any] = field(default_factory=dict)
    message: str = ""  # one line on what the run is doing or how it ended
    warnings: list[str] = field(default_factory=list)
    adapter_path: str | None = None
    error: str | None = None
    finished: FinishedSummary | None = None
    # With early stopping: the step whose adapter the run kept (eval_loss and metrics are that step's).
    best_step: int | None = None
    started: float | None = None
    ended: float | None = None
    last_terminal: bool = False  # the stream's last event is terminal (a resume appends after it)

    @classmethod
    def of_run(cls, run_id: str, config: dict[str, Any], usd_per_hour: float | None = None,
               curves: Curves | None = None) -> RunState:
        data = config.get("data")
        return cls(run_id=run_id, name=as_text(config.get("name")), model=as_text(config.get("model")),
                   data=as_text(data.get("path")) if isinstance(data, dict) else None,
                   backend=as_text(config.get("backend")), usd_per_hour=usd_per_hour, curves=curves)

    def apply(self, event: Event) -> None:
        if self.curves is not None:
            self.curves.add(event)
        self.started = self.started or event.time
        self.last_terminal = event.terminal
        if event.type == "started":  # also a resume: what an earlier end reported no longer holds
            self.status, self.error, self.ended = "running", None, None
            self.total_steps = as_count(event.get("total_steps"))
            if "resumed_step" in event.payload:
                self.step = as_count(event.get("resumed_step")) or 0
            self.message = f"{event.get('model')} on {event.get('device')} ({event.get('precision', '')})"
        elif event.type == "step":
            self.step = as_count(event.get("step")) or self.step
            loss = as_number(event.get("loss"))
            if loss is not None:
                self.first_loss = loss if self.first_loss is None else self.first_loss
                self.last_loss = loss
                self.losses.append(loss)
            self.tokens_per_s = as_number(event.get("tokens_per_s"))
            self.eta_s = as_number(event.get("eta_s"))
        elif event.type == "eval":
            if "eval_loss" in event.payload:
                self.eval_loss = as_number(event.get("eval_loss"))
            self.metrics = as_scores(event.get("metrics")) or self.metrics
            self.base_metrics = as_scores(event.get("base_metrics")) or self.base_metrics
            samples = event.get("samples")
            self.samples = samples if isinstance(samples, list) and samples else self.samples
            self.judge = add_judge_usage(self.judge, event.get("judge"))
        elif event.type == "log":
            if event.get("level") in ("warning", "error"):
                self.warnings.append(str(event.get("message")))
            elif self.status == "pending":
                self.message = str(event.get("message"))
        elif event.terminal:
            self._end(event)

    def _end(self, event: Event) -> None:
        self.status, self.ended = event.type, event.time
        self.adapter_path = as_text(event.get("adapter_path"))
        self.eta_s = 0.0 if event.type == "finished" else None
        if event.type == "failed":
            self.error = self.message = f"{event.get('error')}: {event.get('message')}"
        elif event.type == "cancelled":
            self.message = str(event.get("message", "cancelled; adapter and checkpoint kept"))
        else:
            kept = self.finished = FinishedSummary.from_dict(event.get("summary"))
            self.message = kept.describe()
            if kept.best_step is not None:  # the kept adapter's scores, not the last evaluation's
                self.best_step, self.eval_loss = kept.best_step, kept.eval_loss
                self.metrics = kept.metrics or self.metrics

    # --- what the fold means, given whether the run's worker lives (None: unknown) ----------------
    def status_given(self, alive: bool | None) -> str:
        """The status to show: a run whose worker is gone without a final event is `lost`."""
        return "lost" if alive is False and self.status in LIVE else self.status

    def mark_worker_gone(self) -> None:
        if self.status_given(False) == "lost":
            self.status, self.message = "lost", "the worker stopped without a final event"

    def settled(self, alive: bool | None) -> bool:
        """Nothing more will be written: the worker is gone, or the stream ended and no worker goes on."""
        return alive is False or (self.last_terminal and not alive)

    def cost_usd(self, now: float | None = None) -> float | None:
        """Spend so far: the recorded rate from the first event to the end (or now, while running)."""
        if self.usd_per_hour is None or self.started is None:
            return None
        end = self.ended or (time.time() if now is None else now)
        return self.usd_per_hour * (end - self.started) / 3600.0

    def summary(self, alive: bool | None = None) -> RunSummary:
        return RunSummary(run_id=self.run_id, status=self.status_given(alive), name=self.name,
                          model=self.model, data=self.data, backend=self.backend, step=self.step,
                          total_steps=self.total_steps,
                          last_loss=self.last_loss, eval_loss=self.eval_loss, metrics=dict(self.metrics),
                          base_metrics=dict(self.base_metrics), adapter_path=self.adapter_path,
                          best_step=self.best_step, error=self.error, started=self.started, ended=self.ended,
                          cost_usd=self.cost_usd(), loss_trace=_downsample(self.losses),
                          judge=dict(self.judge))


class LiveState:
    """A RunState kept up to date from its events file: the one apply loop over an EventTail."""

    def __init__(self, path: str | os.PathLike[str], make: Callable[[], RunState] = RunState) -> None:
        self._make = make
        self.tail = EventTail(path)
        self.state: RunState = make()
        # A dashboard's follow thread and the cell waiting on the run may update it at the same time.
        self._lock = threading.Lock()

    def update(self) -> list[Event]:
        """Fold what was appended since the last update; returns those events. A replaced file is
        folded again from its start into a fresh state."""
        with self._lock:
            events = self.tail.read()
            if self.tail.restarted:
                self.state = self._make()
            for event in events:
                self.state.apply(event)
            return events


@dataclass
class RunSummary:
    """A run as run lists show it (CLI, `%finetune runs`, the REST API and the sidebar): a RunState's view."""

    run_id: str
    status: str
    name: str | None = None
    model: str | None = None
    data: str | None = None
    backend: str | None = None
    step: int = 0
    total_steps: int | None = None
    last_loss: float | None = None
    eval_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    base_metrics: dict[str, float] = field(default_factory=dict)
    adapter_path: str | None = None
    # With early stopping: the step whose adapter the run kept (eval_loss and metrics are that step's).
    best_step: int | None = None
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    # GPU spend so far in USD; None where nothing is billed (local runs).
    cost_usd: float | None = None
    # Train loss downsampled to at most SPARK_POINTS values, for sparklines in run lists.
    loss_trace: list[float] = field(default_factory=list)
    # The LLM judge's calls, failures, cached verdicts, input/output tokens and cost_usd over the run's
    # evaluations; {} when no metric counts its work.
    judge: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        """One line: status, progress, losses, scores against the base model, adapter, error."""
        parts = [self.status]
        if self.total_steps:
            parts.append(f"step {self.step}/{self.total_steps}")
        if self.last_loss is not None:
            parts.append(f"loss {self.last_loss:.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval loss {self.eval_loss:.4f}")
        for name, value in self.metrics.items():
            base = self.base_metrics.get(name)
            parts.append(f"{name} {value:.3f}" + (f" (base {base:.3f})" if base is not None else ""))
        if self.best_step is not None:
            parts.append(f"best evaluated step {self.best_step}")
        if self.judge:
            parts.append(describe_judge_usage(self.judge))
        if self.adapter_path:
            parts.append(f"adapter: {self.adapter_path}")
        if self.error:
            parts.append(f"error: {self.error}")
        return " · ".join(parts)

    def __repr__(self) -> str:  # short: the loss trace is for sparklines, not for reading
        return f"<RunSummary {self.name or self.run_id}: {self.describe()}>"

    def _repr_html_(self) -> str:
        """The summary as a small table (the notebook's view)."""
        from html import escape

        fields: dict[str, Any] = {
            "run": self.run_id, "name": self.name, "status": self.status,
            "step": f"{self.step}/{self.total_steps or '?'}", "model": self.model, "data": self.data,
            "train loss": None if self.last_loss is None else f"{self.last_loss:.4f}",
            "eval loss": None if self.eval_loss is None else f"{self.eval_loss:.4f}"}
        for name, value in self.metrics.items():
            base = self.base_metrics.get(name)
            fields[name] = f"{value:.3f}" + (f" (base {base:.3f})" if base is not None else "")
        fields |= {"best evaluated step": self.best_step,
                   "judge": describe_judge_usage(self.judge).removeprefix("judge: ") if self.judge else None,
                   "adapter": self.adapter_path, "error": self.error}
        rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th>"
                       f"<td style='text-align:left'>{escape(str(v))}</td></tr>"
                       for k, v in fields.items() if v not in (None, ""))
        return f"<table class='nbft-summary'>{rows}</table>"


def add_judge_usage(total: dict[str, Any], spent: Any) -> dict[str, Any]:
    """An eval event's `judge` (what the judge took for that evaluation) added to the run's total. The cost
    stays None until an evaluation reports one (a judge without prices)."""
    if not isinstance(spent, dict):
        return total
    added: dict[str, Any] = {key: (total.get(key) or 0) + (as_count(spent.get(key)) or 0)
                             for key in USAGE_COUNTS}
    cost, more = total.get("cost_usd"), as_number(spent.get("cost_usd"))
    added["cost_usd"] = cost if more is None else (cost or 0.0) + more
    return added


def describe_judge_usage(usage: dict[str, Any]) -> str:
    """'judge: 24 calls · 3.1k tokens · $0.0020' (with failures and cached verdicts when there are any)."""
    calls = as_count(usage.get("calls")) or 0
    extra = [f"{n} {what}" for n, what in ((as_count(usage.get("failures")) or 0, "failed"),
                                           (as_count(usage.get("cached")) or 0, "cached")) if n]
    tokens = sum(as_count(usage.get(key)) or 0 for key in ("input_tokens", "output_tokens"))
    cost = as_number(usage.get("cost_usd"))
    return " · ".join([f"judge: {calls} calls" + (f" ({', '.join(extra)})" if extra else ""),
                       f"{_short(tokens)} tokens",
                       "cost unknown (no prices)" if cost is None else f"${cost:.4f}"])


def _short(count: int) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def _downsample(values: list[float], points: int = SPARK_POINTS) -> list[float]:
    if len(values) <= points:
        return list(values)
    stride = len(values) / points
    return [values[min(len(values) - 1, int(i * stride))] for i in range(points - 1)] + [values[-1]]


def summarize(run_id: str, config: dict[str, Any], events: list[Event], worker_alive: bool | None,
              usd_per_hour: float | None = None) -> RunSummary:
    """The summary of a list of events (the store keeps a LiveState instead, to fold only what is new)."""
    state = RunState.of_run(run_id, config, usd_per_hour)
    for event in events:
        state.apply(event)
    return state.summary(worker_alive)

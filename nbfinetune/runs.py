"""RunStore: one directory per run, an append-only events.jsonl that is the single source of truth.

runs/<run_id>/{config.json, events.jsonl, worker.pid, worker.log, adapter/, checkpoints/}
Stdlib only: the server extension and the notebook read runs without importing torch.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig, nbfinetune_home
from .events import Event, EventError

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RunNotFound(LookupError):
    """No run with this id in the store."""


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"malformed run id {run_id!r}: letters, digits, '-', '_' and '.' only")
    return run_id


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class EventWriter:
    """Appends events with dense seq numbers; each line is flushed and fsync'd before emit returns.

    Thread-safe, so a heartbeat thread and the training loop can share one writer.
    """

    def __init__(self, path: str | os.PathLike[str], run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._lock = threading.Lock()
        self._next_seq = _last_seq(self.path) + 1
        self._file = open(self.path, "a", encoding="utf-8")

    def emit(self, type: str, **payload: Any) -> Event:
        with self._lock:
            event = Event(type=type, run_id=self.run_id, seq=self._next_seq, time=time.time(), payload=payload)
            self._file.write(event.to_json() + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._next_seq += 1
            return event

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _last_seq(path: Path) -> int:
    last = 0
    for event in read_events(path).events:
        last = event.seq
    return last


@dataclass
class ReadResult:
    events: list[Event]
    # (line number, reason) for lines that are not valid events — e.g. a line torn by a crash.
    problems: list[tuple[int, str]] = field(default_factory=list)
    # Byte offset just past the last complete line: where a follower resumes reading.
    offset: int = 0


def read_events(path: str | os.PathLike[str], offset: int = 0, first_line: int = 1) -> ReadResult:
    """Read complete lines from offset; a torn or corrupt line is reported, never fatal."""
    result = ReadResult(events=[], offset=offset)
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return result
    if b"\n" not in data:
        return result  # nothing complete yet: a writer may be mid-line
    complete, _, _partial = data.rpartition(b"\n")
    line_no = first_line
    for raw in complete.split(b"\n"):
        if raw.strip():
            try:
                result.events.append(Event.from_json(raw.decode("utf-8")))
            except (EventError, UnicodeDecodeError) as exc:
                result.problems.append((line_no, str(exc)))
        line_no += 1
    result.offset = offset + len(complete) + 1
    return result


@dataclass
class RunSummary:
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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:  # short: the loss trace is for sparklines, not for reading
        from .api import describe

        return f"<RunSummary {self.name or self.run_id}: {describe(self)}>"

    def _repr_html_(self) -> str:
        from .api import summary_html

        return summary_html(self)


SPARK_POINTS = 40


def _downsample(values: list[float], points: int = SPARK_POINTS) -> list[float]:
    if len(values) <= points:
        return values
    stride = len(values) / points
    return [values[min(len(values) - 1, int(i * stride))] for i in range(points - 1)] + [values[-1]]


def summarize(run_id: str, config: dict[str, Any], events: list[Event], worker_alive: bool | None) -> RunSummary:
    summary = RunSummary(run_id=run_id, status="pending", name=config.get("name"), model=config.get("model"),
                         data=(config.get("data") or {}).get("path"), backend=config.get("backend"))
    losses: list[float] = []
    for event in events:
        summary.started = summary.started or event.time
        if event.type == "started":
            summary.status = "running"
            summary.total_steps = event.get("total_steps")
        elif event.type == "step":
            summary.step = event["step"]
            summary.last_loss = event["loss"]
            losses.append(event["loss"])
        elif event.type == "eval":
            summary.eval_loss = event.get("eval_loss", summary.eval_loss)
            summary.metrics = event.get("metrics") or summary.metrics
            summary.base_metrics = event.get("base_metrics") or summary.base_metrics
        elif event.terminal:
            summary.status = event.type
            summary.ended = event.time
            summary.adapter_path = event.get("adapter_path")
            kept = event.get("summary") or {}
            if event.type == "finished" and kept.get("best_step") is not None:
                summary.best_step = kept["best_step"]
                summary.eval_loss = kept.get("eval_loss", summary.eval_loss)
                summary.metrics = kept.get("metrics") or summary.metrics
            if event.type == "failed":
                summary.error = f"{event['error']}: {event['message']}"
    summary.loss_trace = _downsample(losses)
    if config.get("backend") == "modal" and summary.started is not None:
        from .pricing import UnknownGPU, cost_so_far

        try:  # GPU-seconds × price, from the first event to the end (or now, while running)
            summary.cost_usd = cost_so_far(config.get("gpu", "A10"), (summary.ended or time.time()) - summary.started)
        except UnknownGPU:
            pass
    if not (events and events[-1].terminal) and worker_alive is False and summary.status in ("pending", "running"):
        summary.status = "lost"
    return summary


class RunStore:
    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(home or nbfinetune_home()) / "runs"

    def path(self, run_id: str) -> Path:
        return self.root / validate_run_id(run_id)

    def events_path(self, run_id: str) -> Path:
        return self.path(run_id) / "events.jsonl"

    def create(self, config: RunConfig, run_id: str | None = None) -> str:
        run_id = validate_run_id(run_id or new_run_id())
        directory = self.path(run_id)
        directory.mkdir(parents=True, exist_ok=False)
        (directory / "config.json").write_text(config.to_json(), encoding="utf-8")
        (directory / "events.jsonl").touch()
        return run_id

    def exists(self, run_id: str) -> bool:
        return (self.path(run_id) / "config.json").is_file()

    def require(self, run_id: str) -> Path:
        if not self.exists(run_id):
            known = ", ".join(self.ids()[-5:]) or "none yet"
            raise RunNotFound(f"no run {run_id!r} in {self.root} (latest: {known})")
        return self.path(run_id)

    def config(self, run_id: str) -> dict[str, Any]:
        return json.loads((self.require(run_id) / "config.json").read_text(encoding="utf-8"))

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _RUN_ID.match(p.name) and (p / "config.json").is_file()]
        # config.json is written once, at creation: its mtime orders runs by when they were launched.
        return [p.name for p in sorted(found, key=lambda p: ((p / "config.json").stat().st_mtime, p.name))]

    def latest(self) -> str | None:
        ids = self.ids()
        return ids[-1] if ids else None

    def events(self, run_id: str, since_seq: int = 0) -> ReadResult:
        result = read_events(self.require(run_id) / "events.jsonl")
        result.events = [e for e in result.events if e.seq > since_seq]
        return result

    def follow(self, run_id: str, since_seq: int = 0, poll_s: float = 0.2,
               should_stop: Callable[[], bool] = lambda: False,
               worker_alive: Callable[[], bool | None] | None = None) -> Iterator[Event]:
        """Yield stored events, then new ones as they are appended, until the run has ended.

        A run has ended when its last event is terminal and its worker is not running (a resumed run
        continues after an earlier `cancelled`), or when the worker is gone. Ends early on should_stop().
        """
        path = self.require(run_id) / "events.jsonl"
        offset, line, last = 0, 1, None

        def alive() -> bool | None:
            return worker_alive() if worker_alive is not None else None

        while True:
            chunk = read_events(path, offset, first_line=line)
            line += len(chunk.events) + len(chunk.problems)
            offset = chunk.offset
            for event in chunk.events:
                if event.seq > since_seq:
                    yield event
                last = event
            if last is not None and last.terminal and not alive():
                return
            if should_stop():
                return
            if not chunk.events and alive() is False:
                # One last read: the worker may have written its final line just before exiting.
                tail = read_events(path, offset, first_line=line)
                yield from (e for e in tail.events if e.seq > since_seq)
                return
            time.sleep(poll_s)

    def summary(self, run_id: str) -> RunSummary:
        config = self.config(run_id)
        alive = pid_alive(self.path(run_id))
        events_file = self.events_path(run_id)
        try:
            stat = events_file.stat()
            key = (stat.st_size, stat.st_mtime_ns, alive)
        except FileNotFoundError:
            key = None
        cached = _summary_cache.get(events_file)
        # Run lists are polled every few seconds; an unchanged file (every ended run) is not parsed again.
        if cached is not None and key is not None and cached[0] == key and config.get("backend") != "modal":
            return cached[1]
        summary = summarize(run_id, config, _events_so_far(events_file, keep=alive is not False), alive)
        if key is not None:
            _summary_cache[events_file] = (key, summary)
        return summary

    def list(self) -> list[RunSummary]:
        return [self.summary(run_id) for run_id in self.ids()]

    def delete(self, run_id: str) -> None:
        shutil.rmtree(self.require(run_id))


_summary_cache: dict[Path, tuple[tuple[int, int, bool | None], RunSummary]] = {}
# Live runs' events parsed so far (offset, next line number, events): each poll parses only what was
# appended since, so listing a 100k-step run costs the same at step 100k as at step 10.
_live_events: dict[Path, tuple[int, int, list[Event]]] = {}


def _events_so_far(path: Path, keep: bool) -> list[Event]:
    offset, line, events = _live_events.pop(path, (0, 1, []))
    try:
        if path.stat().st_size < offset:  # replaced (e.g. re-mirrored): start over
            offset, line, events = 0, 1, []
    except FileNotFoundError:
        return []
    chunk = read_events(path, offset, first_line=line)
    events = events + chunk.events
    if keep:  # ended runs are summarized once and cached above; their events need not stay in memory
        _live_events[path] = (chunk.offset, line + len(chunk.events) + len(chunk.problems), events)
    return events


def pid_alive(run_dir: Path) -> bool | None:
    """True/False when the run's worker pid is known; None when no worker was recorded."""
    pid_file = run_dir / "worker.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, IndexError):
        return True

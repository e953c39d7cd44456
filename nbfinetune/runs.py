"""RunStore: one directory per run, an append-only events.jsonl that is the single source of truth.

runs/<run_id>/{config.json, events.jsonl, worker.pid, worker.log, adapter/, checkpoints/}
Stdlib only: the server extension and the notebook read runs without importing torch.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import secrets
import shutil
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig, nbfinetune_home
from .events import Event, EventError, redact

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RunNotFound(LookupError):
    """No run with this id in the store."""


class RunDamaged(ValueError):
    """A run directory whose files cannot be read as a run (e.g. an empty config.json after a full disk)."""


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
        torn = _torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if torn:
            # A line cut short (a crash or a full disk mid-write): start a fresh line so the next event is
            # not glued onto it and lost, and say what happened in the stream itself.
            self._file.write("\n")
            self.emit("log", level="warning", message=f"the previous writer left a torn last line ({torn} bytes, "
                                                      "e.g. a full disk or a kill mid-write); it is kept as it was")

    def emit(self, type: str, **payload: Any) -> Event:
        with self._lock:
            event = Event(type=type, run_id=self.run_id, seq=self._next_seq, time=time.time(), payload=payload)
            line = event.to_json()
            safe = redact(line)
            if safe != line:  # a credential in a path or message: what is stored and passed on is redacted
                line, event = safe, Event.from_json(safe)
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._next_seq += 1
            return event

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _torn_tail(path: Path) -> int:
    """Length of an unterminated last line (0 when the file ends with a newline, is empty or missing)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            block = min(size, 1 << 16)
            handle.seek(size - block)
            tail = handle.read(block)
    except FileNotFoundError:
        return 0
    if tail.endswith(b"\n"):
        return 0
    cut = tail.rfind(b"\n")
    return len(tail) - cut - 1 if cut >= 0 else size


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
class EventPage:
    events: list[Event]
    more: bool
    problems: list[tuple[int, str]] = field(default_factory=list)


_SEQ = re.compile(rb'"seq":\s*(\d+)')


class _OffsetIndex:
    """Byte offset and line number of each event line by seq, extended as the file grows: a page of
    events is then read from its first line onwards, in time proportional to the page."""

    def __init__(self) -> None:
        self.seqs: array[int] = array("q")
        self.offsets: array[int] = array("q")
        self.lines: array[int] = array("q")
        self.end, self.next_line = 0, 1

    def extend(self, path: Path) -> None:
        with open(path, "rb") as handle:
            handle.seek(self.end)
            while chunk := handle.read(1 << 20):
                complete = chunk[: chunk.rfind(b"\n") + 1]
                if not complete:
                    if len(chunk) < 1 << 20:
                        break  # a line still being written
                    complete = chunk + handle.readline()  # a line longer than the chunk
                    if not complete.endswith(b"\n"):
                        break
                position = 0
                for raw in complete.splitlines(keepends=True):
                    found = _SEQ.search(raw)
                    if found:
                        self.seqs.append(int(found.group(1)))
                        self.offsets.append(self.end + position)
                        self.lines.append(self.next_line)
                    position += len(raw)
                    self.next_line += 1
                self.end += len(complete)
                handle.seek(self.end)


_indexes: dict[Path, _OffsetIndex] = {}


def page_events(path: Path, since: int, limit: int) -> EventPage:
    """Events with seq > since, at most limit of them, read from an offset index (see _OffsetIndex)."""
    index = _indexes.get(path)
    try:
        if index is None or path.stat().st_size < index.end:  # new, or replaced (e.g. re-mirrored)
            index = _indexes[path] = _OffsetIndex()
        index.extend(path)
    except FileNotFoundError:
        return EventPage([], False)
    start = bisect.bisect_right(index.seqs, since)
    if start >= len(index.seqs):
        return EventPage([], False)
    page = EventPage([], False)
    line = index.lines[start]
    with open(path, "rb") as handle:
        handle.seek(index.offsets[start])
        position = index.offsets[start]
        while position < index.end:
            raw = handle.readline()
            position += len(raw)
            if raw.strip():
                try:
                    event = Event.from_json(raw.decode("utf-8"))
                except (EventError, UnicodeDecodeError) as exc:
                    page.problems.append((line, str(exc)))
                else:
                    if event.seq > since:
                        if len(page.events) == limit:
                            page.more = True
                            break
                        page.events.append(event)
            line += 1
    return page


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


def _number(value: Any) -> float | None:
    """A finite number, or None: events are data from disk, and views (the sidebar's toFixed, JSON without
    NaN) need real numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _scores(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in ((k, _number(v)) for k, v in value.items()) if v is not None}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def summarize(run_id: str, config: dict[str, Any], events: list[Event], worker_alive: bool | None) -> RunSummary:
    data = config.get("data")
    summary = RunSummary(run_id=run_id, status="pending", name=_text(config.get("name")),
                         model=_text(config.get("model")),
                         data=_text(data.get("path")) if isinstance(data, dict) else None,
                         backend=_text(config.get("backend")))
    losses: list[float] = []
    for event in events:
        summary.started = summary.started or event.time
        if event.type == "started":  # also a resume: what an earlier end reported no longer holds
            summary.status, summary.error, summary.ended = "running", None, None
            summary.total_steps = _count(event.get("total_steps"))
        elif event.type == "step":
            summary.step = _count(event["step"]) or summary.step
            loss = _number(event["loss"])
            if loss is not None:
                summary.last_loss = loss
                losses.append(loss)
        elif event.type == "eval":
            summary.eval_loss = _number(event.get("eval_loss")) if "eval_loss" in event.payload else summary.eval_loss
            summary.metrics = _scores(event.get("metrics")) or summary.metrics
            summary.base_metrics = _scores(event.get("base_metrics")) or summary.base_metrics
        elif event.terminal:
            summary.status = event.type
            summary.ended = event.time
            summary.adapter_path = _text(event.get("adapter_path"))
            kept = event.get("summary")
            kept = kept if isinstance(kept, dict) else {}
            if event.type == "finished" and _count(kept.get("best_step")) is not None:
                summary.best_step = _count(kept["best_step"])
                summary.eval_loss = _number(kept.get("eval_loss")) if "eval_loss" in kept else summary.eval_loss
                summary.metrics = _scores(kept.get("metrics")) or summary.metrics
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
        # Secrets (a token inside a model path, say) never reach the disk; see LocalBackend for how the
        # worker still gets the real value.
        (directory / "config.json").write_text(redact(config.to_json()), encoding="utf-8")
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
        path = self.require(run_id) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:  # ValueError: not JSON, or not UTF-8
            raise RunDamaged(f"config.json is unreadable ({'empty' if not path.stat().st_size else exc})") from None
        if not isinstance(config, dict):
            raise RunDamaged(f"config.json holds a {type(config).__name__}, not a JSON object")
        return config

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

    def events_page(self, run_id: str, since_seq: int, limit: int) -> EventPage:
        return page_events(self.require(run_id) / "events.jsonl", since_seq, limit)

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
        """The run's summary; a run whose files cannot be read is `damaged`, with why in `error`."""
        try:
            return self._summary(run_id)
        except RunDamaged as exc:
            return RunSummary(run_id=run_id, status="damaged", error=str(exc))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # One run's damage stays its own: every listing (CLI, REST, sidebar) goes on with the others.
            return RunSummary(run_id=run_id, status="damaged", error=f"{type(exc).__name__}: {exc}")

    def _summary(self, run_id: str) -> RunSummary:
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
    """Whether the run's worker lives: its writer lock is held (see ownership.py). Runs of earlier versions
    (no lock file): the recorded pid, only if it is still the same process. None when no worker was recorded."""
    from .ownership import lock_held, our_pid

    held = lock_held(run_dir)
    if held is not None:
        return held
    if not (run_dir / "worker.pid").is_file():
        return None
    return our_pid(run_dir / "worker.pid") is not None

"""RunStore: one directory per run, an append-only events.jsonl that is the single source of truth.

runs/<run_id>/{config.json, events.jsonl, rate.json, writer.lock, worker.log, adapter/, checkpoints/}
Its events are read by EventTail (tail.py) and folded by RunState (run_state.py); the names of both are
re-exported here. Stdlib only: the server extension and the notebook read runs without importing torch.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import secrets
import shutil
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig, nbfinetune_home
from .event_writer import EventWriter
from .events import Event, as_number, redact
from .run_state import ENDED, LIVE, SPARK_POINTS, LiveState, RunState, RunSummary, summarize
from .tail import EVENTS_FILE, EventTail, ReadResult, events_file, last_event, read_events

# The runs layer's names, where they live (run_state.py: the fold; tail.py: the reader; here: the store).
__all__ = ["ENDED", "EVENTS_FILE", "LIVE", "RUNS_DIR", "SPARK_POINTS", "EventPage", "EventTail",
           "EventWriter", "LiveState", "ReadResult", "RunDamaged", "RunIsRunning", "RunNotFound", "RunState",
           "RunStore", "RunSummary", "events_file", "last_event", "new_run_id", "page_events", "read_events",
           "summarize", "validate_run_id", "worker_alive"]

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


@dataclass
class EventPage:
    events: list[Event]
    more: bool
    problems: list[tuple[int, str]] = field(default_factory=list)


_SEQ = re.compile(rb'"seq":\s*(\d+)')


class _OffsetIndex:
    """Byte offset and line number of each event line by seq, extended from an EventTail as the file
    grows: a page of events is then read from its first line onwards, in time proportional to the page."""

    def __init__(self, path: Path) -> None:
        self.tail = EventTail(path)
        self.seqs: array[int] = array("q")
        self.offsets: array[int] = array("q")
        self.lines: array[int] = array("q")

    def extend(self) -> bool:
        """Index the lines appended since; False when the file was replaced (then index a new one)."""
        for offset, number, raw in self.tail.lines():
            found = _SEQ.search(raw)  # no JSON parsing: indexing stays cheap for long runs
            if found:
                self.seqs.append(int(found.group(1)))
                self.offsets.append(offset)
                self.lines.append(number)
        return not self.tail.restarted


_indexes: dict[Path, _OffsetIndex] = {}


def page_events(path: Path, since: int, limit: int) -> EventPage:
    """Events with seq > since, at most limit of them, read from an offset index (see _OffsetIndex)."""
    index = _indexes.get(path)
    if index is None or not index.extend():  # new, or replaced (e.g. re-mirrored)
        index = _indexes[path] = _OffsetIndex(path)
        index.extend()
    start = bisect.bisect_right(index.seqs, since)
    if start >= len(index.seqs):
        return EventPage([], False)
    page = EventPage([], False)
    # A tail from the page's first line, read only as far as the page goes.
    reader = EventTail(path, index.offsets[start], index.lines[start])
    for offset, number, raw in reader.lines():
        if offset >= index.tail.offset:
            break  # past what the index has seen: the next page
        event = reader.parse(number, raw)
        if event is not None and event.seq > since:
            if len(page.events) == limit:
                page.more = True
                break
            page.events.append(event)
    page.problems = reader.problems
    return page


# The runs root inside NBFINETUNE_HOME: spelled here only.
RUNS_DIR = "runs"
# Written at launch by backends that bill by time: {"usd_per_hour": x}, so every reader computes cost.
RATE_FILE = "rate.json"


class RunIsRunning(RuntimeError):
    """Deleting a run whose worker is still alive would pull its files from under it."""


class RunStore:
    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(home or nbfinetune_home()) / RUNS_DIR

    def path(self, run_id: str) -> Path:
        return self.root / validate_run_id(run_id)

    def events_path(self, run_id: str) -> Path:
        return events_file(self.path(run_id))

    def create(self, config: RunConfig, run_id: str | None = None, usd_per_hour: float | None = None) -> str:
        run_id = validate_run_id(run_id or new_run_id())
        directory = self.path(run_id)
        directory.mkdir(parents=True, exist_ok=False)
        # Secrets (a token inside a model path, say) never reach the disk; see LocalBackend for how the
        # worker still gets the real value.
        (directory / "config.json").write_text(redact(config.to_json()), encoding="utf-8")
        events_file(directory).touch()
        if usd_per_hour is not None:
            self.record_rate(run_id, usd_per_hour)
        return run_id

    def record_rate(self, run_id: str, usd_per_hour: float) -> None:
        """What the run costs per hour while it runs (the backend's price, fixed at launch)."""
        (self.path(run_id) / RATE_FILE).write_text(json.dumps({"usd_per_hour": usd_per_hour}))

    def rate(self, run_id: str) -> float | None:
        try:
            recorded = json.loads((self.path(run_id) / RATE_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return as_number(recorded.get("usd_per_hour")) if isinstance(recorded, dict) else None

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
            why = "empty" if not path.stat().st_size else exc
            raise RunDamaged(f"config.json is unreadable ({why})") from None
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
        result = read_events(events_file(self.require(run_id)))
        result.events = [e for e in result.events if e.seq > since_seq]
        return result

    def events_page(self, run_id: str, since_seq: int, limit: int) -> EventPage:
        return page_events(events_file(self.require(run_id)), since_seq, limit)

    def state(self, run_id: str) -> RunState:
        """The run's events folded now (views that need more than the summary: the CLI, a report)."""
        config = self.config(run_id)
        live = LiveState(events_file(self.require(run_id)),
                         lambda: RunState.of_run(run_id, config, self.rate(run_id)))
        live.update()
        return live.state

    def worker_alive(self, run_id: str) -> bool | None:
        """Liveness as the store sees it without a backend: the run's writer lock (see ownership.py);
        None when unknown (e.g. a Modal run: its backend knows)."""
        return worker_alive(self.path(run_id))

    def follow(self, run_id: str, since_seq: int = 0, poll_s: float = 0.2,
               should_stop: Callable[[], bool] = lambda: False,
               worker_alive: Callable[[], bool | None] | None = None) -> Iterator[Event]:
        """Yield stored events, then new ones as they are appended, until the run has ended.

        A run has ended when its last event is terminal and its worker is not running (a resumed run
        continues after an earlier `cancelled`), or when the worker is gone. Ends early on should_stop().
        """
        for events, _state in self._follow(run_id, since_seq, poll_s, should_stop, worker_alive):
            yield from events

    def watch(self, run_id: str, poll_s: float = 0.2, should_stop: Callable[[], bool] = lambda: False,
              worker_alive: Callable[[], bool | None] | None = None) -> Iterator[RunState]:
        """The run's state each time new events came, until the run has ended (as `follow`)."""
        for _events, state in self._follow(run_id, 0, poll_s, should_stop, worker_alive):
            yield state

    def _follow(self, run_id: str, since_seq: int, poll_s: float, should_stop: Callable[[], bool],
                worker_alive: Callable[[], bool | None] | None) -> Iterator[tuple[list[Event], RunState]]:
        live = LiveState(events_file(self.require(run_id)))
        yielded = since_seq

        def alive() -> bool | None:
            return worker_alive() if worker_alive is not None else None

        def new(events: list[Event]) -> Iterator[tuple[list[Event], RunState]]:
            nonlocal yielded
            # After a replaced file (re-mirrored) is read again: only what was not yielded yet.
            after = yielded if live.tail.restarted else since_seq
            fresh = [event for event in events if event.seq > after]
            yielded = max([yielded, *(event.seq for event in fresh)])
            if fresh:
                yield fresh, live.state

        while True:
            events = live.update()
            yield from new(events)
            if (live.state.last_terminal or not events) and live.state.settled(alive()):
                # One last read: the worker may have written its final line just before exiting.
                yield from new(live.update())
                return
            if should_stop():
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
        alive = self.worker_alive(run_id)
        path = self.events_path(run_id)
        try:
            stat = path.stat()
            key = (stat.st_size, stat.st_mtime_ns, alive)
        except FileNotFoundError:
            key = None
        cached = _summary_cache.get(path)
        # Run lists are polled every few seconds; an unchanged file (every ended run) is not parsed again.
        if cached is not None and key is not None and cached[0] == key:
            return cached[1]
        rate = self.rate(run_id)
        live = _live_states.pop(path, None) or LiveState(path, lambda: RunState.of_run(run_id, config, rate))
        live.update()
        live.state.usd_per_hour = rate
        summary = live.state.summary(alive)
        if alive is not False:  # ended runs are summarized once and cached; their state need not stay
            _live_states[path] = live
        # A billed run's cost grows while it runs, with or without new events: not cached until it ends.
        if key is not None and (summary.cost_usd is None or summary.ended is not None):
            _summary_cache[path] = (key, summary)
        return summary

    def list(self) -> list[RunSummary]:
        return [self.summary(run_id) for run_id in self.ids()]

    def delete(self, run_id: str, alive: bool | None = None) -> None:
        """Remove the run's directory; refused (RunIsRunning) while it runs. alive: the backend's answer
        where the caller has one, else the store's (the writer lock)."""
        path = self.require(run_id)
        alive = self.worker_alive(run_id) if alive is None else alive
        status = self.summary(run_id).status
        if alive is True or (alive is None and status == "running"):
            raise RunIsRunning(f"run {run_id} is {status}: cancel it first (%finetune cancel {run_id}), then "
                               "delete it")
        shutil.rmtree(path)


_summary_cache: dict[Path, tuple[tuple[int, int, bool | None], RunSummary]] = {}
# Live runs' states folded so far: each poll folds only what was appended since, so listing a 100k-step
# run costs the same at step 100k as at step 10.
_live_states: dict[Path, LiveState] = {}


def worker_alive(run_dir: Path) -> bool | None:
    """True while a worker of the run lives, False once gone, None when unknown (see ownership.py)."""
    from .ownership import worker_alive as alive

    return alive(run_dir)

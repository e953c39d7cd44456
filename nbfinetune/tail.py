"""EventTail: the one incremental reader of an events file. Stdlib only.

Every reader of a run's events (the store's follow and summaries, the dashboard, the sweep overlay, the
Modal mirror, the remote publish loop, the local worker) reads through it, so what a torn line, a
corrupt line or a replaced file means is decided here once:
- only complete lines are read: a writer may be mid-line, and the rest of that line comes next time;
- a line that is not a valid event is a problem (line number, reason), never fatal;
- a file that was replaced (another inode) or cut shorter is read again from its start (`restarted`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .events import Event, EventError

# The name of a run's event stream inside its directory: spelled here only.
EVENTS_FILE = "events.jsonl"


def events_file(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / EVENTS_FILE


class EventTail:
    """Reads what was appended to an events file since the last read, from a byte offset."""

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, line: int = 1) -> None:
        self.path = Path(path)
        self.offset = offset  # just past the last complete line read
        self.line = line  # the number of the next line
        self.problems: list[tuple[int, str]] = []  # (line number, reason) of lines that are not events
        self.restarted = False  # the last read started over: the file was replaced or truncated
        self._inode: int | None = None

    def lines(self) -> Iterator[tuple[int, int, bytes]]:
        """(byte offset, line number, raw line) of each complete line since the last read; a line is
        consumed once yielded."""
        self.restarted = False
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return
        with handle:
            stat = os.fstat(handle.fileno())
            if (self._inode is not None and stat.st_ino != self._inode) or stat.st_size < self.offset:
                self.offset, self.line, self.problems, self.restarted = 0, 1, [], True
            self._inode = stat.st_ino
            handle.seek(self.offset)
            for raw in handle:  # splits on b"\n" only
                if not raw.endswith(b"\n"):
                    return  # torn: a writer is mid-line (or crashed there); read it when it is complete
                start, number = self.offset, self.line
                self.offset += len(raw)
                self.line += 1
                yield start, number, raw

    def read(self) -> list[Event]:
        """The complete events appended since the last read."""
        events = []
        for _offset, number, raw in self.lines():
            event = self.parse(number, raw)
            if event is not None:
                events.append(event)
        return events

    def parse(self, number: int, raw: bytes) -> Event | None:
        if not raw.strip():
            return None
        try:
            return Event.from_json(raw.decode("utf-8"))
        except (EventError, UnicodeDecodeError) as exc:
            self.problems.append((number, str(exc)))
            return None


@dataclass
class ReadResult:
    events: list[Event]
    # (line number, reason) for lines that are not valid events — e.g. a line torn by a crash.
    problems: list[tuple[int, str]] = field(default_factory=list)
    # Byte offset just past the last complete line: where a follower resumes reading.
    offset: int = 0


def read_events(path: str | os.PathLike[str], offset: int = 0, first_line: int = 1) -> ReadResult:
    """Read complete lines from offset, once; a torn or corrupt line is reported, never fatal."""
    tail = EventTail(path, offset, first_line)
    events = tail.read()
    return ReadResult(events, tail.problems, tail.offset)


def last_seq(path: str | os.PathLike[str]) -> int:
    """The highest seq in the file (0 when it has no event): where a writer or a mirror goes on from."""
    return max((event.seq for event in EventTail(path).read()), default=0)


def last_event(path: str | os.PathLike[str]) -> Event | None:
    """The file's last complete event (None when it has none)."""
    events = EventTail(path).read()
    return events[-1] if events else None

"""EventWriter: the one writer of a run's events file. Stdlib only, below the store: the worker and the
Modal body write with it without importing the store."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from .events import Event, redact
from .tail import last_seq


class EventWriter:
    """Appends events with dense seq numbers; each line is flushed and fsync'd before emit returns.

    Thread-safe, so a heartbeat thread and the training loop can share one writer.
    """

    def __init__(self, path: str | os.PathLike[str], run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._lock = threading.Lock()
        self._next_seq = last_seq(self.path) + 1
        torn = _torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if torn:
            # A line cut short (a crash or a full disk mid-write): start a fresh line so the next event is
            # not glued onto it and lost, and say what happened in the stream itself.
            self._file.write("\n")
            self.emit("log", level="warning",
                      message=f"the previous writer left a torn last line ({torn} bytes, e.g. a full disk "
                              "or a kill mid-write); it is kept as it was")

    def emit(self, type: str, **payload: Any) -> Event:
        with self._lock:
            event = Event(type=type, run_id=self.run_id, seq=self._next_seq, time=time.time(),
                          payload=payload)
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

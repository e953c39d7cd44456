"""One failure reporter for every place a run can end badly: the local worker, its supervisor, the Modal
container body (one trainer or several) and the Modal client (which sees only Modal's reason). Each
builds a `Failure` and reports it the same way, so every `failed` event says what happened in a line,
carries the traceback or log tail, has its secrets redacted and, for out-of-memory, says what to try."""

from __future__ import annotations

import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .events import redact

OOM_HINT = "try a smaller batch_size or max_seq_len, or gradient_checkpointing"
_OOM_MARKERS = ("out of memory", "outofmemory", "oom", "exit code 137", "sigkill", "memory limit")
TRACEBACK_FRAMES = 6
LOG_TAIL_LINES = 15

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """The payload of a `failed` event. error: what broke, as a name (the exception class, `Killed(SIGKILL)`,
    `ModalCallFailed`); message: one line for the user; traceback: the traceback's or the log's tail."""

    error: str
    message: str
    traceback: str = ""

    def fields(self) -> dict[str, str]:
        """What the event carries: free text may hold a credential (a token in a path), so it is redacted."""
        return {"error": self.error, "message": redact(self.message), "traceback": redact(self.traceback)}

    def report(self, emit: Callable[..., T]) -> T:
        """Emit the `failed` event through any `emit(type, **payload)`."""
        return emit("failed", **self.fields())


def from_exception(exc: BaseException) -> Failure:
    """Training raised: the exception's class, a line saying what happened, the traceback's tail."""
    tail = "".join(traceback.format_exception(exc)[-TRACEBACK_FRAMES:])
    return Failure(type(exc).__name__, describe(exc), tail)


def from_exit(code: int, log: Path) -> Failure:
    """A training process ended without reporting (killed, out of memory, crashed): its exit status says
    how, its log's tail what it printed last."""
    return Failure(exit_reason(code), exit_message(code, log.name), log_tail(log))


def from_reason(error: str, reason: str, log_tail: str = "") -> Failure:
    """The run ended outside training and only the platform knows why (Modal's reason for a call)."""
    return Failure(error, describe_reason(reason), log_tail)


def looks_like_oom(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


def describe(exc: BaseException) -> str:
    """The one-line message of a `failed` event for an exception raised by training."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return f"out of memory: {text.splitlines()[0]} — {OOM_HINT}"
    return text


def describe_reason(reason: str) -> str:
    """The message for a run that ended outside training, from the platform's reason (Modal, a signal)."""
    reason = reason.strip() or "the container ended without a result"
    if looks_like_oom(reason):
        return f"{reason} — most often the container ran out of memory; {OOM_HINT}"
    return reason


def exit_reason(code: int) -> str:
    if code < 0:
        return f"Killed({signal.Signals(-code).name})"
    return f"ExitCode({code})"


def exit_message(code: int, log_name: str = "worker.log") -> str:
    if code == -signal.SIGKILL:  # what the kernel's out-of-memory killer sends
        return ("the training process was killed (SIGKILL) — most often the system ran out of memory; "
                + OOM_HINT)
    if code < 0:
        return f"the training process died from signal {signal.Signals(-code).name}"
    return f"the training process exited with status {code} without reporting an error; see {log_name}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a process's log, to attach to its failure ('' when it wrote none)."""
    try:
        return "".join(path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-lines:])
    except FileNotFoundError:
        return ""


def failed_result(failure: Failure) -> dict[str, Any]:
    """What a remote call returns after reporting a failure (its event carries the details)."""
    fields = failure.fields()
    return {"status": "failed", "error": f"{fields['error']}: {fields['message']}"}

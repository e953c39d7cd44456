"""One failure reporter for every place a run can end badly: the local worker, its supervisor, the Modal
container body and the Modal client (which sees only Modal's reason). Says what happened in a line and,
for out-of-memory, what to try."""

from __future__ import annotations

OOM_HINT = "try a smaller batch_size or max_seq_len, or gradient_checkpointing"
_OOM_MARKERS = ("out of memory", "outofmemory", "oom", "exit code 137", "sigkill", "memory limit")


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

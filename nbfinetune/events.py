"""The event contract: every run is a stream of these, persisted one JSON object per line.

Wire form: {"v": 1, "type": ..., "run_id": ..., "seq": n, "time": unix_s, ...payload}.
Stdlib only, so any process (worker, kernel, server extension) can read and write it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
EVENT_TYPES = ("started", "step", "eval", "checkpoint", "log", "finished", "failed", "cancelled")
TERMINAL_TYPES = ("finished", "failed", "cancelled")
_ENVELOPE = ("v", "type", "run_id", "seq", "time")

# Payload fields every event of a type carries; consumers may rely on them.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "started": ("model", "device", "total_steps"),
    "step": ("step", "epoch", "loss", "lr"),
    "eval": ("step",),
    "checkpoint": ("step", "path"),
    "log": ("level", "message"),
    "finished": ("adapter_path",),
    "failed": ("error", "message"),
    "cancelled": (),
}


class EventError(ValueError):
    """A line or object does not follow the event contract."""


@dataclass(frozen=True)
class Event:
    type: str
    run_id: str
    seq: int
    time: float
    payload: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise EventError(f"unknown event type {self.type!r}")
        missing = [name for name in REQUIRED_FIELDS[self.type] if name not in self.payload]
        if missing:
            raise EventError(f"{self.type} event lacks {', '.join(missing)}")
        clash = [name for name in self.payload if name in _ENVELOPE]
        if clash:
            raise EventError(f"payload may not set envelope fields {', '.join(clash)}")

    def get(self, name: str, default: Any = None) -> Any:
        return self.payload.get(name, default)

    def __getitem__(self, name: str) -> Any:
        return self.payload[name]

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def to_dict(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "type": self.type, "run_id": self.run_id, "seq": self.seq,
                "time": self.time, **self.payload}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False, default=_jsonable)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Event:
        if not isinstance(obj, dict):
            raise EventError("an event must be a JSON object")
        if obj.get("v") != SCHEMA_VERSION:
            raise EventError(f"unsupported event schema version {obj.get('v')!r}")
        missing = [name for name in ("type", "run_id", "seq", "time") if name not in obj]
        if missing:
            raise EventError(f"event lacks {', '.join(repr(m) for m in missing)}")
        seq, when = obj["seq"], obj["time"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise EventError(f"event seq must be a positive integer, got {seq!r:.40}")
        if isinstance(when, bool) or not isinstance(when, (int, float)) or when != when:
            raise EventError(f"event time must be a number, got {when!r:.40}")
        if not isinstance(obj["type"], str):
            raise EventError(f"event type must be a string, got {obj['type']!r:.40}")
        payload = {k: v for k, v in obj.items() if k not in _ENVELOPE}
        return cls(type=obj["type"], run_id=str(obj["run_id"]), seq=seq, time=float(when), payload=payload)

    @classmethod
    def from_json(cls, line: str) -> Event:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EventError(f"not JSON: {exc.msg}") from None
        return cls.from_dict(obj)


def _jsonable(value: Any) -> Any:
    # numpy / torch scalars reach us from metrics; NaN is not JSON, so it becomes null.
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and value != value else value
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


_SECRET_PATTERNS = [
    re.compile(r"hf_[A-Za-z0-9]{20,}"),
    re.compile(r"(?:ak|as)-[A-Za-z0-9]{16,}"),  # Modal token id / secret
]


_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")


def redact(text: str) -> str:
    """Remove HF / Modal credentials from free text (tracebacks, logs): known values and look-alikes."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text


# --- reading payloads: events are data from disk, and views (the sidebar's toFixed, JSON without NaN)
# need real numbers, so a value of the wrong type or a non-finite number reads as missing.
def as_number(value: Any) -> float | None:
    """A finite number, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def as_count(value: Any) -> int | None:
    number = as_number(value)
    return int(number) if number is not None and number == int(number) else None


def as_scores(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in ((k, as_number(v)) for k, v in value.items()) if v is not None}


def as_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class FinishedSummary:
    """The `summary` a `finished` event carries: what the trainer reports about the run it ended."""

    first_loss: float | None = None
    last_loss: float | None = None
    # The kept adapter's evaluation: with early stopping, best_step's, else the final one's.
    eval_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    base_metrics: dict[str, float] = field(default_factory=dict)
    steps: int | None = None
    train_time_s: float | None = None
    # With early stopping: the evaluated step whose adapter the run kept, and whether it stopped early.
    best_step: int | None = None
    stopped_early: bool = False

    @classmethod
    def from_dict(cls, value: Any) -> FinishedSummary:
        """Lenient: a missing or malformed summary (an older version, a damaged file) reads as empty."""
        value = value if isinstance(value, dict) else {}
        return cls(first_loss=as_number(value.get("first_loss")), last_loss=as_number(value.get("last_loss")),
                   eval_loss=as_number(value.get("eval_loss")), metrics=as_scores(value.get("metrics")),
                   base_metrics=as_scores(value.get("base_metrics")), steps=as_count(value.get("steps")),
                   train_time_s=as_number(value.get("train_time_s")),
                   best_step=as_count(value.get("best_step")),
                   stopped_early=value.get("stopped_early") is True)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"first_loss": self.first_loss, "last_loss": self.last_loss,
                               "eval_loss": self.eval_loss, "metrics": self.metrics,
                               "base_metrics": self.base_metrics, "steps": self.steps,
                               "train_time_s": self.train_time_s}
        if self.best_step is not None or self.stopped_early:  # only runs with early stopping report these
            out |= {"best_step": self.best_step, "stopped_early": self.stopped_early}
        return out

    def describe(self) -> str:
        """One line on which adapter the run kept; '' when it is simply the last one."""
        if self.best_step is None:
            return ""  # the status badge already says "finished"
        how = f"stopped early at step {self.steps}" if self.stopped_early else "finished"
        return f"{how}; the adapter is the best evaluated one, from step {self.best_step}"

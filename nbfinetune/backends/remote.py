"""The body of the remote training function, free of Modal imports so it runs (and is tested) anywhere.

It calls the same `train()` as the local worker. Every event goes to the run's events.jsonl on the
Volume (the durable history) and is published for the live tail; the Volume is committed every few
events and at every checkpoint, so a preempted container restarts from the last checkpoint (train()
resumes from it) with its history on disk.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..events import Event, redact
from ..runs import EventWriter, validate_run_id

COMMIT_EVERY = 20
CANCEL_CHECK_S = 5.0


class _Relay:
    """Publishes each stored event for the live tail (best effort: the Volume has every event) and
    commits the Volume every COMMIT_EVERY events, at evals and checkpoints, and at the end."""

    def __init__(self, publish: Callable[[dict[str, Any]], None], commit: Callable[[], None]) -> None:
        self.publish, self.commit, self.count = publish, commit, 0

    def __call__(self, event: Event) -> None:
        self.count += 1
        try:
            self.publish(event.to_dict())
        except Exception:  # noqa: BLE001 — a full or unreachable queue must not stop training
            pass
        if self.count % COMMIT_EVERY == 0 or event.type in ("checkpoint", "eval") or event.terminal:
            self.commit()


def remote_train(config: dict[str, Any], run_id: str, runs_root: str, publish: Callable[[dict[str, Any]], None],
                 commit: Callable[[], None], cancelled: Callable[[], bool]) -> dict[str, Any]:
    run_dir = Path(runs_root) / validate_run_id(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = RunConfig.from_dict(config)
    if not (run_dir / "config.json").exists():
        (run_dir / "config.json").write_text(run_config.to_json(), encoding="utf-8")
    if run_config.train.processes > 1:
        return _train_in_processes(run_dir, run_config.train.processes, publish, commit, cancelled)
    writer = EventWriter(run_dir / "events.jsonl", run_id)
    relay = _Relay(publish, commit)

    def emit(type: str, **payload: Any) -> None:
        relay(writer.emit(type, **payload))

    last_check = [0.0]
    stop = [False]

    def should_stop() -> bool:
        # A cancel flag lives in a remote dict: look it up every few seconds, not every step.
        if not stop[0] and time.monotonic() - last_check[0] > CANCEL_CHECK_S:
            last_check[0] = time.monotonic()
            stop[0] = bool(cancelled())
        return stop[0]

    try:
        from ..core.trainer import train

        return {"status": "finished", **train(run_config, emit, should_stop, run_dir)}
    except Exception as exc:  # reported as an event; the call itself ends normally (no pointless retries)
        tail = "".join(traceback.format_exception(exc)[-6:])
        emit("failed", error=type(exc).__name__, message=redact(str(exc) or type(exc).__name__),
             traceback=redact(tail))
        return {"status": "failed", "error": f"{type(exc).__name__}: {redact(str(exc))}"}
    finally:
        writer.close()
        commit()


def _train_in_processes(run_dir: Path, processes: int, publish: Callable[[dict[str, Any]], None],
                        commit: Callable[[], None], cancelled: Callable[[], bool]) -> dict[str, Any]:
    """Several GPUs: the worker runs `processes` data-parallel trainers under torchrun and its rank 0
    writes events.jsonl; this loop publishes each new line for the live tail and commits the Volume."""
    import signal
    import subprocess

    from ..runs import read_events
    from ..worker import child_command

    process = subprocess.Popen(child_command(run_dir, processes))
    relay = _Relay(publish, commit)
    offset, last, cancel_sent = 0, None, False
    while True:
        exited = process.poll() is not None
        chunk = read_events(run_dir / "events.jsonl", offset)
        offset = chunk.offset
        for event in chunk.events:
            last = event
            relay(event)
        if exited:
            break
        if not cancel_sent and cancelled():
            process.send_signal(signal.SIGTERM)  # graceful: rank 0 saves adapter and checkpoint
            cancel_sent = True
        time.sleep(1.0)
    commit()
    status = last.type if last is not None and last.terminal else "failed"
    return {"status": status, "exit_code": process.returncode}

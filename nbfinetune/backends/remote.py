"""The body of the remote training function, free of Modal imports so it runs (and is tested) anywhere.

It calls the same `train()` as the local worker. Every event goes to the run's events.jsonl on the
Volume (the durable history); a background relay commits the Volume every few seconds and at every
checkpoint, then publishes the committed events for the live tail, so a preempted container restarts
from the last checkpoint (train() resumes from it) with its history on disk and its seq dense.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import failures
from ..config import RunConfig
from ..events import Event
from ..runs import EventTail, EventWriter, events_file, validate_run_id

FLUSH_S = 2.0
CANCEL_CHECK_S = 5.0
CONTAINER_LOG = "container.log"

Publish = Callable[[list[dict[str, Any]]], Any]


class _Relay:
    """Commits the Volume, then publishes what it committed for the live tail, from a background thread
    every FLUSH_S seconds and at once after checkpoints, evals and the end. Training never waits on Modal.

    Publishing only committed events keeps `seq` dense and unique across retries: a retried container
    continues from the Volume's last committed event, and nothing later was ever published."""

    def __init__(self, publish: Publish, commit: Callable[[], None]) -> None:
        self.publish, self.commit = publish, commit
        self.pending: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, daemon=True, name="nbfinetune-relay")
        self.thread.start()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.pending.append(event.to_dict())
        if event.type in ("checkpoint", "eval") or event.terminal:
            self.wake.set()

    def _loop(self) -> None:
        while not self.closed:
            self.wake.wait(FLUSH_S)
            self.wake.clear()
            with contextlib.suppress(Exception):  # a failed commit or publish is retried at the next flush
                self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        self.commit()
        if batch:
            try:
                self.publish(batch)  # best effort: a full or unreachable queue never stops training
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        self.thread.join(30)
        self.flush()


@contextlib.contextmanager
def _container_log(run_dir: Path) -> Iterator[None]:
    """Copy the container's stdout and stderr to run_dir/container.log on the Volume, so its tail reaches
    the user when the container dies (the Volume is committed with the events)."""
    log = open(run_dir / CONTAINER_LOG, "a", encoding="utf-8", buffering=1)

    class Tee:
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def write(self, text: str) -> int:
            with contextlib.suppress(ValueError):
                log.write(text)
            return self.stream.write(text)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.stream, name)

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        log.close()


def _check_cuda(config: RunConfig) -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"the container has no CUDA device (gpu={config.gpu!r}); refusing to train on "
                           "CPU — check the GPU type and the torch build in the image")


def remote_train(config: dict[str, Any], run_id: str, runs_root: str, publish: Publish,
                 commit: Callable[[], None], cancelled: Callable[[], bool],
                 require_cuda: bool = False) -> dict[str, Any]:
    run_dir = Path(runs_root) / validate_run_id(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = RunConfig.from_dict(config)
    if not (run_dir / "config.json").exists():
        (run_dir / "config.json").write_text(run_config.to_json(), encoding="utf-8")
    with _container_log(run_dir):
        print(f"nbfinetune {run_id}: starting ({run_config.model}, gpu={run_config.gpu})", flush=True)
        if run_config.train.processes > 1:
            return _train_in_processes(run_dir, run_config.train.processes, publish, commit, cancelled)
        return _train_one(run_config, run_id, run_dir, publish, commit, cancelled, require_cuda)


def _train_one(run_config: RunConfig, run_id: str, run_dir: Path, publish: Publish,
               commit: Callable[[], None], cancelled: Callable[[], bool],
               require_cuda: bool) -> dict[str, Any]:
    writer = EventWriter(events_file(run_dir), run_id)
    relay = _Relay(publish, commit)

    def emit(type: str, **payload: Any) -> None:
        relay(writer.emit(type, **payload))

    last_check = [0.0]
    stop = [False]

    def should_stop() -> bool:
        # A cancel flag lives in a remote dict: look it up every few seconds, not every step.
        if not stop[0] and time.monotonic() - last_check[0] > CANCEL_CHECK_S:
            last_check[0] = time.monotonic()
            with contextlib.suppress(Exception):  # an unreachable Dict must not end the run
                stop[0] = bool(cancelled())
        return stop[0]

    try:
        if require_cuda:
            _check_cuda(run_config)
        from ..core.trainer import train

        return {"status": "finished", **train(run_config, emit, should_stop, run_dir)}
    except Exception as exc:  # reported as an event; the call itself ends normally (no pointless retries)
        failure = failures.from_exception(exc)
        failure.report(emit)
        return failures.failed_result(failure)
    finally:
        writer.close()
        relay.close()


def _train_in_processes(run_dir: Path, processes: int, publish: Publish,
                        commit: Callable[[], None], cancelled: Callable[[], bool]) -> dict[str, Any]:
    """Several GPUs: the worker runs `processes` data-parallel trainers under torchrun and its rank 0
    writes events.jsonl; this loop publishes each new line for the live tail and commits the Volume.

    When a rank dies (the out-of-memory killer's SIGKILL, a crash), rank 0 at best reports the broken
    connection to its peer: the run's failure is the rank torchrun names as the root cause, so rank 0's
    `failed` event is held back until torchrun has exited and replaced when another rank caused it."""
    import signal
    import subprocess

    from ..worker import child_command

    log_path = run_dir / CONTAINER_LOG
    with open(log_path, "a", encoding="utf-8") as log:
        log_start = log.tell()
        process = subprocess.Popen(child_command(run_dir, processes), stdout=log, stderr=subprocess.STDOUT)
    relay = _Relay(publish, commit)
    tail = EventTail(events_file(run_dir))
    last, cancel_sent = None, False
    while True:
        exited = process.poll() is not None
        for event in tail.read():
            last = event
            if event.type != "failed":
                relay(event)
        if exited:
            break
        if not cancel_sent and cancelled():
            process.send_signal(signal.SIGTERM)  # graceful: rank 0 saves adapter and checkpoint
            cancel_sent = True
        time.sleep(1.0)
    cause = _root_cause(log_path, log_start) if process.returncode else None
    if last is not None and last.type == "failed" and cause is not None and cause[0] != 0:
        _drop_last_line(events_file(run_dir))  # rank 0's report of a peer's death: not the reason
        last = None
    if last is None or not last.terminal:  # a rank crashed or was killed before rank 0 could report
        writer = EventWriter(events_file(run_dir), run_dir.name)
        if cause is None:
            failure = failures.from_exit(process.returncode, log_path)
        else:
            rank, code = cause
            failure = failures.from_exit(code, log_path)
            failure = failures.Failure(failure.error, f"rank {rank} of {processes}: {failure.message}",
                                       failure.traceback)
        last = failure.report(writer.emit)
        writer.close()
    if last.type == "failed":
        relay(last)
    relay.close()
    return {"status": last.type, "exit_code": process.returncode}


def _root_cause(log: Path, start: int) -> tuple[int, int] | None:
    """The rank and exit code torchrun reports as the first observed failure in this attempt's log
    ("Root Cause (first observed failure): ... rank : 1 (local_rank: 1) ... exitcode : -9"), or None."""
    import re

    with open(log, encoding="utf-8", errors="replace") as handle:
        handle.seek(start)
        text = handle.read()
    _, found, report = text.rpartition("Root Cause (first observed failure):")
    match = re.search(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", report, re.S) if found else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def _drop_last_line(path: Path) -> None:
    """Remove the events file's last event (every writer has exited), so the next one takes its seq."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(lines[:-1]), encoding="utf-8")
    os.replace(temporary, path)

"""Local backend: the worker runs as a detached subprocess, so the kernel stays responsive and the run
keeps going if the kernel restarts.

Liveness and the right to write a run come from the run's writer lock (see ownership.py), never from a
pid alone: pids are reused, and a signal must only ever reach this run's own processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..events import redact
from ..ownership import RunLocked, signal_ours, take_lock, worker_alive, write_pid
from ..runs import EventWriter, RunStore, events_file, last_event
from ..worker import CANCEL_MARKER, CHILD_PID, CONFIG_ENV, HARD_CANCEL_MARKER

if TYPE_CHECKING:
    from ..serving import ChatModel
    from .base import RunLike

# How long resume waits for a worker that has written its terminal event to exit.
EXIT_GRACE_S = 30.0


class LocalBackend:
    name = "local"

    def launch(self, config: RunConfig, store: RunStore) -> str:
        run_id = store.create(config, usd_per_hour=self.usd_per_hour(config))
        if redact(config.to_json()) != config.to_json():
            # config.json is stored redacted: the worker gets the real settings through its environment.
            _secret_configs[run_id] = config.to_json()
        self._start(run_id, store, take_lock(store.path(run_id)))
        return run_id

    def resume(self, run_id: str, store: RunStore) -> None:
        """Start the worker again on an existing run: it continues from the latest checkpoint."""
        run_dir = store.require(run_id)
        last = last_event(events_file(run_dir))
        # After `cancelled` the worker still saves and exits: wait for that rather than refuse.
        wait_s = EXIT_GRACE_S if last is not None and last.terminal else 2.0
        try:
            lock = take_lock(run_dir, wait_s)
        except RunLocked:
            raise RuntimeError(f"run {run_id} is still running; cancel it first") from None
        stored = (run_dir / "config.json").read_text(encoding="utf-8")
        if run_id not in _secret_configs and REDACTED in stored:
            os.close(lock)
            raise RuntimeError(f"run {run_id}'s settings held a secret (e.g. a token in the model path), "
                               "which is never stored on disk, and this kernel no longer has it: launch a "
                               "new run instead")
        for marker in (CANCEL_MARKER, HARD_CANCEL_MARKER):
            (run_dir / marker).unlink(missing_ok=True)
        if last is not None and not last.terminal:  # `lost`: we hold the lock, so may write what happened
            writer = EventWriter(events_file(run_dir), run_id)
            writer.emit("log", level="warning",
                        message="the previous worker stopped without a final event (its processes were "
                                "killed, or the machine restarted); resuming from the latest checkpoint")
            writer.close()
        self._start(run_id, store, lock)

    def _start(self, run_id: str, store: RunStore, lock: int) -> None:
        run_dir = store.path(run_id)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        if run_id in _secret_configs:
            env[CONFIG_ENV] = _secret_configs[run_id]
        (run_dir / CHILD_PID).unlink(missing_ok=True)  # the previous trainer's, on a resume
        try:
            with open(run_dir / "worker.log", "ab") as log:
                # The worker inherits the lock: it stays held while the supervisor or its trainer lives.
                process = subprocess.Popen([sys.executable, "-m", "nbfinetune.worker", str(run_dir),
                                            "--lock-fd", str(lock)], pass_fds=(lock,),
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           env=env,
                                           start_new_session=True, cwd=run_dir)
        finally:
            os.close(lock)
        write_pid(run_dir / "worker.pid", process.pid)
        # Keep a reference so the child is reaped when it ends (no zombie while the kernel lives).
        _children[run_id] = process

    def cancel(self, run_id: str, store: RunStore, hard: bool = False) -> None:
        """Marker first, then a signal to our own process: a supervisor that has not yet started its
        trainer acts on the marker itself, so a cancel right after launch is never lost."""
        run_dir = store.require(run_id)
        if not self.is_alive(run_id, store):
            return
        if hard:
            (run_dir / HARD_CANCEL_MARKER).touch()
            signal_ours(run_dir / CHILD_PID, signal.SIGKILL)
        else:
            (run_dir / CANCEL_MARKER).touch()
            # The supervisor's handlers are installed once train.pid exists.
            if (run_dir / CHILD_PID).exists():
                signal_ours(run_dir / "worker.pid", signal.SIGTERM)

    def is_alive(self, run_id: str, store: RunStore) -> bool | None:
        """The run's writer lock is held (or, for runs of earlier versions, its recorded worker process is
        still the same process): see ownership.py."""
        process = _children.get(run_id)
        if process is not None:
            process.poll()  # reap
        return worker_alive(store.path(run_id))

    def usd_per_hour(self, config: RunConfig) -> float | None:
        return None  # your own machine: nothing is billed by the hour

    # --- what differs between backends -----------------------------------------------------------
    # Runs here take turns: two at once would only fight over the same cores (or the one GPU).
    max_concurrent_runs: int | None = 1
    serves_in_process = True

    def check_launch(self, config: RunConfig) -> None:
        """Nothing to refuse ahead: nothing is billed, and the worker reports what does not fit."""

    def chat_model(self, run: RunLike) -> ChatModel:
        """The base model plus the run's adapter, loaded in this process (one at a time)."""
        from ..core.models import resolve_model
        from ..serving import chat_model

        summary = run.summary()
        if not summary.adapter_path and summary.status in ("failed", "lost"):
            raise RuntimeError(f"run {run.id} {summary.status} without an adapter"
                               + (f": {summary.error}" if summary.error else "")
                               + " — fix the cause and launch again, or resume it if it saved a checkpoint")
        if not summary.adapter_path:
            raise RuntimeError(f"run {run.id} has no adapter yet (status: {summary.status}); wait for it to "
                               "finish or cancel it — a cancelled run keeps its adapter")
        return chat_model(resolve_model(run.config.model), summary.adapter_path)

    def serve(self, runs: list[Any], **options: Any) -> Any:
        """An HTTP server in this process (see serve/local.py for the options)."""
        from ..serve.local import serve_runs

        return serve_runs(runs, **options)

    def remote_adapter_path(self, run_id: str) -> str | None:
        return None  # the adapter is in the run's directory on this machine


_children: dict[str, subprocess.Popen] = {}
# run id → the unredacted config JSON of runs launched from this process whose settings held a secret.
_secret_configs: dict[str, str] = {}
REDACTED = "[redacted]"

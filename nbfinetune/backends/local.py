"""Local backend: the worker runs as a detached subprocess, so the kernel stays responsive and the run
keeps going if the kernel restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ..config import RunConfig
from ..runs import RunStore, pid_alive
from ..worker import CANCEL_MARKER, CHILD_PID, HARD_CANCEL_MARKER


class LocalBackend:
    name = "local"

    def launch(self, config: RunConfig, store: RunStore) -> str:
        run_id = store.create(config)
        self._start(run_id, store)
        return run_id

    def resume(self, run_id: str, store: RunStore) -> None:
        """Start the worker again on an existing run: it continues from the latest checkpoint."""
        run_dir = store.require(run_id)
        if self.is_alive(run_id, store):
            raise RuntimeError(f"run {run_id} is still running")
        for marker in (CANCEL_MARKER, HARD_CANCEL_MARKER):
            (run_dir / marker).unlink(missing_ok=True)
        self._start(run_id, store)

    def _start(self, run_id: str, store: RunStore) -> None:
        run_dir = store.path(run_id)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        with open(run_dir / "worker.log", "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "nbfinetune.worker", str(run_dir)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, cwd=run_dir)
        (run_dir / "worker.pid").write_text(str(process.pid))
        # Keep a reference so the child is reaped when it ends (no zombie while the kernel lives).
        _children[run_id] = process

    def cancel(self, run_id: str, store: RunStore, hard: bool = False) -> None:
        run_dir = store.require(run_id)
        if hard:
            (run_dir / HARD_CANCEL_MARKER).touch()
            _signal_pid_file(run_dir / CHILD_PID, signal.SIGKILL)
        else:
            _signal_pid_file(run_dir / "worker.pid", signal.SIGTERM)

    def is_alive(self, run_id: str, store: RunStore) -> bool | None:
        process = _children.get(run_id)
        if process is not None:
            return process.poll() is None
        return pid_alive(store.path(run_id))


_children: dict[str, subprocess.Popen] = {}


def _signal_pid_file(path: "os.PathLike[str]", signum: int) -> None:
    try:
        pid = int(open(path).read().strip())
        os.kill(pid, signum)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass

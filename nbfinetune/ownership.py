"""Which processes own a run: the writer lock and process identity. Stdlib only.

One lock per run (`flock` on runs/<id>/writer.lock). The launcher takes it before starting the worker
and hands the open descriptor down to the supervisor and the trainer, so it is held exactly while any
of them lives — whatever happens to pids. That makes two things hold without trusting pid files:
- liveness: a run is alive iff its lock is held (a reused pid can never look like our worker);
- at most one writer: a second launch or resume cannot take the lock while a trainer still writes.
Pid files record the process start time too, so a signal goes to a pid only if it is still that process.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "writer.lock"


class RunLocked(RuntimeError):
    """Another process (a supervisor or trainer of this run) holds the run's writer lock."""


def take_lock(run_dir: Path, wait_s: float = 2.0) -> int:
    """Open and lock the run's lock file; returns the descriptor (inheritable, to pass to the worker).

    Waits up to wait_s: a reader testing the lock holds it for a moment, and a worker that has just
    written its terminal event needs a moment to exit."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.set_inheritable(fd, True)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunLocked(f"run {run_dir.name} is still running (a worker process holds "
                                f"{run_dir / LOCK_FILE})") from None
            time.sleep(0.05)


def lock_held(run_dir: Path) -> bool | None:
    """True while a worker of the run lives; False once all are gone; None for runs without a lock file."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing our own descriptor releases what we took, never the worker's lock


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == "Z":  # exited, not yet reaped: no longer the process we started
        return None
    return int(fields[19])


def write_pid(path: Path, pid: int) -> None:
    started = start_time(pid)
    path.write_text(f"{pid} {started if started is not None else ''}".strip())


def our_pid(path: Path) -> int | None:
    """The pid recorded in path if that process is still the one recorded; None otherwise."""
    try:
        words = path.read_text().split()
        pid = int(words[0])
        recorded = int(words[1]) if len(words) > 1 else None
    except (FileNotFoundError, ValueError, IndexError):
        return None
    now = start_time(pid)
    if now is None:
        return None
    if recorded is None:  # a pid file of an earlier version: accept only a worker of this very run
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        return pid if "nbfinetune.worker" in cmdline and str(path.parent) in cmdline else None
    return pid if now == recorded else None


def signal_ours(path: Path, signum: int) -> bool:
    """Signal the process recorded in path only if it is still that process; True when signalled."""
    pid = our_pid(path)
    if pid is None:
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def die_with_parent(parent_pid: int) -> None:
    """In a freshly forked child (Popen preexec_fn): get SIGKILL when the parent dies (Linux), and exit at
    once if it already has — a trainer must not go on writing without its supervisor."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the writer lock still keeps a second writer out
    if os.getppid() != parent_pid:
        os._exit(1)


def worker_alive(run_dir: Path) -> bool | None:
    """Whether a worker of the run lives: its writer lock is held. Runs of earlier versions (no lock file):
    the recorded pid, only if it is still the same process. None when no worker was recorded (e.g. a
    Modal run: only its backend knows)."""
    held = lock_held(run_dir)
    if held is not None:
        return held
    if not (run_dir / "worker.pid").is_file():
        return None
    return our_pid(run_dir / "worker.pid") is not None

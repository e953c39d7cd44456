"""Process entry point for one run: `python -m nbfinetune.worker RUN_DIR`.

Two processes, so a run always ends with a terminal event:
- the supervisor (this module's main) starts the trainer child and waits for it. If the child dies
  without writing finished/failed/cancelled — killed, out of memory, segfault — the supervisor
  appends `failed` (or `cancelled` for a hard cancel) with the reason and the tail of the log.
- the child (`--child`) reads config.json, runs core.trainer.train and writes events.jsonl.
SIGTERM asks the child to stop gracefully: it saves the adapter and a checkpoint, then emits `cancelled`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from . import failures
from .event_writer import EventWriter
from .tail import EventTail, events_file

CANCEL_MARKER = "cancel-requested"
HARD_CANCEL_MARKER = "kill-requested"
CHILD_PID = "train.pid"
# The run's settings unredacted, when they hold a secret (config.json on disk is redacted).
CONFIG_ENV = "NBFINETUNE_RUN_CONFIG"


def run_child(run_dir: Path) -> int:
    from .config import RunConfig

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if "RANK" in os.environ:  # under torchrun: die with it, as torchrun dies with the supervisor
        from .ownership import die_with_parent

        die_with_parent(os.getppid())
    text = os.environ.pop(CONFIG_ENV, None) or (run_dir / "config.json").read_text(encoding="utf-8")
    config = RunConfig.from_dict(json.loads(text))
    if os.environ.get("RANK", "0") != "0":  # another data-parallel process: rank 0 writes the events
        from .core.trainer import train

        train(config, lambda *_a, **_k: None, stop.is_set, run_dir)
        return 0
    writer = EventWriter(events_file(run_dir), run_dir.name)
    try:
        from .core.trainer import train

        train(config, writer.emit, stop.is_set, run_dir)
        return 0
    except BaseException as exc:  # noqa: BLE001 — every failure must become a `failed` event
        failures.from_exception(exc).report(writer.emit)
        return 1
    finally:
        writer.close()


def child_command(run_dir: Path, processes: int) -> list[str]:
    """One trainer process, or `processes` data-parallel ones under torchrun (gloo on CPU, NCCL on GPUs)."""
    target = ["-m", "nbfinetune.worker", "--child", str(run_dir)]
    if processes <= 1:
        return [sys.executable, *target]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            *target]


def supervise(run_dir: Path, lock_fd: int | None = None) -> int:
    from .ownership import RunLocked, die_with_parent, take_lock, write_pid

    if lock_fd is None:  # started by hand, not by a launcher: take the run's writer lock ourselves
        try:
            lock_fd = take_lock(run_dir)
        except RunLocked as exc:
            print(f"nbfinetune worker: {exc}; not starting a second writer", file=sys.stderr)
            return 3
    log_path = run_dir / "worker.log"
    processes = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["train"].get("processes", 1)
    child: subprocess.Popen | None = None

    def forward(signum: int, _frame: object) -> None:
        (run_dir / CANCEL_MARKER).touch()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    # Handlers before train.pid exists: a canceller signals us only once it can read train.pid.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    me = os.getpid()
    # A resumed run's stream already ends in a terminal event: only one written after this point counts.
    tail = EventTail(events_file(run_dir))
    tail.read()
    # The trainer holds the run's lock too (pass_fds) and dies with us (PR_SET_PDEATHSIG).
    child = subprocess.Popen(child_command(run_dir, processes), stdout=sys.stdout, stderr=sys.stderr,
                             pass_fds=(lock_fd,), preexec_fn=lambda: die_with_parent(me))
    write_pid(run_dir / CHILD_PID, child.pid)
    # A cancel that came before train.pid was written found nothing to signal: its marker is acted on here.
    if (run_dir / HARD_CANCEL_MARKER).exists():
        child.kill()
    elif (run_dir / CANCEL_MARKER).exists():
        child.send_signal(signal.SIGTERM)
    code = child.wait()
    events = tail.read()
    if events and events[-1].terminal:
        return code
    writer = EventWriter(events_file(run_dir), run_dir.name)
    try:
        if (run_dir / HARD_CANCEL_MARKER).exists() or (run_dir / CANCEL_MARKER).exists():
            writer.emit("cancelled", hard=True, message="the training process was killed on request; "
                                                         "events and checkpoints written so far are kept")
        else:
            failures.from_exit(code, log_path).report(writer.emit)
    finally:
        writer.close()
    return code or 1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--child":
        return run_child(Path(args[1]))
    lock_fd = None
    if len(args) == 3 and args[1] == "--lock-fd":
        lock_fd = int(args.pop(2))
        args.pop(1)
    if len(args) != 1:
        print("usage: python -m nbfinetune.worker RUN_DIR [--lock-fd FD]", file=sys.stderr)
        return 2
    return supervise(Path(args[0]), lock_fd)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

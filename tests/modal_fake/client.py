"""A fake of our thin ModalClient interface (nbfinetune.backends.modal_backend), for tests of the client
side without the `modal` library; the `modal_client` fixture in tests/conftest.py installs it."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from pathlib import Path

from nbfinetune.backends.modal_backend import ModalAppNotDeployed, ModalSetupError
from nbfinetune.backends.remote import remote_train


class FakeModalClient:
    """Stands in for Modal behind our thin ModalClient interface, behaving as the modal library does:
    polls that see nothing return [] after waiting (RealModalClient turns queue.Empty into []); a
    partition holds PARTITION_LIMIT items and a put to a full one fails; the Volume shows only what a
    container committed; a call reports its end RESULT_DELAY_S after its body returns; a cancel flag
    stays until someone removes it. The container runs the real remote body in a thread."""

    PARTITION_LIMIT = 5000
    RESULT_DELAY_S = 0.3

    def __init__(self, volume: Path, fail_polls: int = 0):
        self.volume = volume
        self.volume.mkdir(parents=True, exist_ok=True)
        self.queues: dict[str, queue.Queue] = {}
        self.calls: dict[str, threading.Thread] = {}
        self.flags: dict[str, bool] = {}
        self.fail_polls = fail_polls
        self.spawned: list[tuple[str, str]] = []
        self.configs: list[dict] = []
        self.ready_error: str | None = None
        self.one_container_at_a_time = threading.Lock()
        self.deployed = True

    def check_ready(self):
        if self.ready_error:
            raise ModalSetupError(self.ready_error)
        if not self.deployed:
            raise ModalAppNotDeployed("not deployed")

    def deploy(self):
        self.deployed = True

    def upload(self, local_path, remote_path):
        target = self.volume / remote_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local_path, target)

    def write_history(self, run_id, data):
        (self.volume / run_id).mkdir(parents=True, exist_ok=True)
        (self.volume / run_id / "events.jsonl").write_bytes(data)

    def spawn(self, config, run_id, gpu):
        self.configs.append(config)
        mount = self.volume.parent / f"container-{len(self.calls)}"
        shutil.copytree(self.volume, mount, dirs_exist_ok=True)  # what the container sees at start
        config = json.loads(json.dumps(config).replace('"/runs/', f'"{mount}/'))  # the mount point
        events = self.queues.setdefault(run_id, queue.Queue(maxsize=self.PARTITION_LIMIT))
        done = threading.Event()

        def publish(batch):
            for event in batch:
                events.put_nowait(event)  # queue.Full when nobody drains it, as put(block=False)

        def commit():
            shutil.copytree(mount, self.volume, dirs_exist_ok=True)

        def container():
            # Real containers are separate processes; threads of one process must not load models
            # at the same time (transformers' meta-device loading is process-global).
            with self.one_container_at_a_time:
                remote_train(config, run_id, str(mount), publish, commit,
                             lambda: self.flags.get(run_id, False))
            time.sleep(self.RESULT_DELAY_S)
            done.set()

        call = threading.Thread(target=container, daemon=True)
        call.done = done
        call_id = f"fc-{len(self.calls)}"
        self.calls[call_id] = call
        self.spawned.append((run_id, gpu))
        call.start()
        return call_id

    def poll_events(self, run_id, timeout_s):
        if self.fail_polls:
            self.fail_polls -= 1
            raise ConnectionError("network lost")
        out, events = [], self.queues.setdefault(run_id, queue.Queue(maxsize=self.PARTITION_LIMIT))
        try:
            out.append(events.get(timeout=min(timeout_s, 0.2)))
            while True:
                out.append(events.get_nowait())
        except queue.Empty:
            return out

    def read_history(self, run_id):
        path = self.volume / run_id / "events.jsonl"
        return path.read_bytes() if path.exists() else None

    def read_log_tail(self, run_id, lines=15):
        path = self.volume / run_id / "container.log"
        return "".join(path.read_text().splitlines(keepends=True)[-lines:]) if path.exists() else ""

    def call_status(self, call_id):
        return "finished" if self.calls[call_id].done.is_set() else "running"

    def cancel(self, call_id, run_id, hard):
        self.flags[run_id] = True

"""Modal backend, client side: launch on a serverless GPU, mirror the live events into the local RunStore,
reattach after a kernel restart, cancel, and watch the budget.

Everything that talks to Modal goes through the small `ModalClient` protocol; `RealModalClient` is the
only code that calls Modal's API, and the tests run the rest against a fake of that protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config import RunConfig
from ..events import Event
from ..pricing import UnknownGPU, cost_so_far, parse_gpu
from ..runs import EVENTS_FILE, RunStore, last_event
from ..tail import last_seq
from .modal_credentials import ModalSetupError, require_credentials

if TYPE_CHECKING:
    from .base import RunLike
    from .modal_chat import RemoteChatModel
    from .modal_serve import ModalServer

MIRROR_POLL_S = 5.0
STATUS_CACHE_S = 5.0


class ModalAppNotDeployed(ModalSetupError):
    """Credentials work but the nbfinetune app is not deployed yet (first use)."""


class ModalAppOutdated(ModalAppNotDeployed):
    """The deployed app was built from another version of nbfinetune: old remote code would run."""


REMOTE_RUNS_ROOT = "/runs"  # the runs Volume's mount point in the containers (modal_app.RUNS_ROOT)
DEFAULT_REMOTE_SAVE_EVERY = 50  # preemptible GPUs: a restarted input resumes from the last checkpoint


class ModalClient(Protocol):
    def check_ready(self) -> None:
        """Raise ModalSetupError when credentials are missing, ModalAppNotDeployed before first deploy."""

    def deploy(self) -> None:
        """Deploy the app, printing Modal's build progress."""

    def upload(self, local_path: str, remote_path: str) -> None: ...

    def spawn(self, config: dict[str, Any], run_id: str, gpu: str) -> str:
        """Start the remote training call; return its call id."""

    def poll_events(self, run_id: str, timeout_s: float) -> list[dict[str, Any]]:
        """Live events published since the last poll; empty when none arrived within timeout_s."""

    def read_history(self, run_id: str) -> bytes | None:
        """The run's events.jsonl from the Volume (committed state), or None when it has none yet."""

    def write_history(self, run_id: str, data: bytes) -> None:
        """Replace the run's events.jsonl on the Volume (before a resume: the client's copy is complete)."""

    def read_log_tail(self, run_id: str, lines: int = 15) -> str:
        """The tail of the container's log from the Volume ('' when there is none)."""

    def call_status(self, call_id: str) -> str:
        """'running', 'finished', 'failed: <reason>' or 'cancelled: <reason>'."""

    def cancel(self, call_id: str, run_id: str, hard: bool) -> None: ...


class ModalBackend:
    name = "modal"

    def __init__(self, client: ModalClient | None = None) -> None:
        self._client = client
        self._mirrors: dict[str, threading.Thread] = {}
        self._status: dict[str, tuple[float, str]] = {}

    @property
    def client(self) -> ModalClient:
        if self._client is None:
            self._client = RealModalClient()
        return self._client

    # --- Backend protocol ------------------------------------------------------------------------
    def launch(self, config: RunConfig, store: RunStore) -> str:
        parse_gpu(config.gpu)  # unknown GPU types fail here, before anything is created
        self._ensure_deployed()
        remote = self.remote_config(config)
        run_id = store.create(config, usd_per_hour=self.usd_per_hour(config))
        self._spawn(run_id, store, remote, config.gpu)
        return run_id

    def resume(self, run_id: str, store: RunStore) -> None:
        self._ensure_deployed()
        config = RunConfig.from_dict(store.config(run_id))
        path = store.events_path(run_id)
        # The local copy holds everything the Volume has plus any terminal event this client recorded
        # for a container that died: the resumed container continues seq after it.
        self._replay_history(run_id, path, last_seq(path))
        if path.exists():
            self.client.write_history(run_id, path.read_bytes())
        self._spawn(run_id, store, self.remote_config(config), config.gpu)

    def remote_config(self, config: RunConfig) -> dict[str, Any]:
        """What the container trains with, for launch and resume alike: data on the Volume, checkpoints
        every DEFAULT_REMOTE_SAVE_EVERY steps (preemptible GPUs), one trainer per GPU."""
        remote = RunConfig.from_dict(config.to_dict())
        if remote.train.save_every is None:
            remote.train.save_every = DEFAULT_REMOTE_SAVE_EVERY
        remote.train.processes = parse_gpu(config.gpu)[1]  # "H100:4" → 4 data-parallel trainers, one per GPU
        remote.data.path = self._upload_if_local(config.data.path)
        if config.data.eval_path:
            remote.data.eval_path = self._upload_if_local(config.data.eval_path)
        return remote.to_dict()

    def _ensure_deployed(self) -> None:
        try:
            self.client.check_ready()
        except ModalAppOutdated as exc:
            print(f"{exc}: redeploying it now…", flush=True)
            self.client.deploy()
        except ModalAppNotDeployed:
            print("nbfinetune is not deployed to Modal yet: deploying it now (first use; the image build "
                  "takes a few minutes the first time)…", flush=True)
            self.client.deploy()

    def _spawn(self, run_id: str, store: RunStore, remote: dict[str, Any], gpu: str) -> None:
        call_id = self.client.spawn(remote, run_id, gpu)
        (store.path(run_id) / "modal.json").write_text(json.dumps({"call_id": call_id, "gpu": gpu}))
        self._status.pop(run_id, None)
        self._start_mirror(run_id, store)

    def cancel(self, run_id: str, store: RunStore, hard: bool = False) -> None:
        if hard:  # remembered, so the run's end reads "cancelled", not "failed"
            meta_path = store.require(run_id) / "modal.json"
            meta = json.loads(meta_path.read_text())
            meta_path.write_text(json.dumps({**meta, "hard_cancel": True}))
        self.client.cancel(self._call_id(run_id, store), run_id, hard)

    def usd_per_hour(self, config: RunConfig) -> float | None:
        """The GPUs' price (Modal bills GPU-seconds)."""
        try:
            return cost_so_far(config.gpu, 3600.0)
        except UnknownGPU:
            return None

    def is_alive(self, run_id: str, store: RunStore) -> bool | None:
        mirror = self._mirrors.get(run_id)
        if mirror is not None and mirror.is_alive():
            return True
        if self._remote_status(run_id, store) == "running":
            self._start_mirror(run_id, store)  # reattach: e.g. after a kernel restart
            return True
        return False

    # --- what differs between backends -----------------------------------------------------------
    # Every run of a sweep is spawned at once: Modal fans out, capped by the workspace's GPU limit.
    max_concurrent_runs: int | None = None
    serves_in_process = False

    def check_launch(self, config: RunConfig) -> None:
        """Refuse, before any GPU second is billed, a run the planner says cannot fit the chosen GPU."""
        from ..planner import GIB, USABLE, DoesNotFit, plan_memory
        from ..pricing import price_table

        name, _count = parse_gpu(config.gpu)
        try:
            estimate = plan_memory(config.model, config)
        except (OSError, KeyError, ValueError):
            return  # no readable config: the planner cannot judge, the run decides
        memory = price_table()["memory_gib"][name]
        if estimate.total > memory * GIB * USABLE:
            raise DoesNotFit(f"this run needs {estimate} but {name} has {memory} GiB; use gpu='auto' to "
                             "pick one that fits, or train.gradient_checkpointing / quantization='nf4' / a "
                             "smaller batch")

    def chat_model(self, run: RunLike) -> RemoteChatModel:
        """The Volume's adapter served by the deployed Chat class: no weights come to this machine."""
        from .modal_chat import RemoteChatModel

        return RemoteChatModel(run.id)

    def serve(self, runs: list[Any], **options: Any) -> ModalServer:
        """A vLLM deployment of the runs' base model with their adapters (see modal_serve.py)."""
        from .modal_serve import serve_modal

        return serve_modal(runs, **options)

    def remote_adapter_path(self, run_id: str) -> str | None:
        return f"{REMOTE_RUNS_ROOT}/{run_id}/adapter"

    # --- mirroring -------------------------------------------------------------------------------
    def _start_mirror(self, run_id: str, store: RunStore) -> None:
        if run_id in self._mirrors and self._mirrors[run_id].is_alive():
            return
        if store.rate(run_id) is None:  # a run launched by an earlier version: its views show cost too
            rate = self.usd_per_hour(RunConfig.from_dict(store.config(run_id)))
            if rate is not None:
                store.record_rate(run_id, rate)
        thread = threading.Thread(target=self._mirror, args=(run_id, store), daemon=True,
                                  name=f"nbfinetune-modal-{run_id}")
        self._mirrors[run_id] = thread
        thread.start()

    def _mirror(self, run_id: str, store: RunStore) -> None:
        """Copy remote events into the local events.jsonl, in seq order, without duplicates; replay the
        Volume's history when the local copy is behind; stop at a terminal event; survive network loss.
        One mirror per run on this machine: a second kernel watching the same run only reads the file."""
        import fcntl

        with open(store.path(run_id) / "mirror.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                while self._remote_status(run_id, store) == "running":
                    time.sleep(MIRROR_POLL_S)  # someone else mirrors; stay "alive" while the run is
                return
            self._mirror_locked(run_id, store)

    def _mirror_locked(self, run_id: str, store: RunStore) -> None:
        path = store.events_path(run_id)
        last = self._replay_history(run_id, path, last_seq(path))
        failures = 0
        budget = RunConfig.from_dict(store.config(run_id)).budget_usd
        while True:
            try:
                incoming = self.client.poll_events(run_id, MIRROR_POLL_S)
                failures = 0
            except Exception:  # network lost: keep the run, back off, reconnect
                failures += 1
                time.sleep(min(30.0, 2.0 ** failures))
                continue
            events = sorted((Event.from_dict(e) for e in incoming), key=lambda e: e.seq)
            if events and events[0].seq > last + 1:  # a gap: the tail lost something; the Volume has it
                last = self._replay_history(run_id, path, last)
            fresh = [e for e in events if e.seq > last]
            _append(path, fresh)
            last = fresh[-1].seq if fresh else last
            if any(e.terminal for e in fresh):
                return
            if budget is not None and (store.summary(run_id).cost_usd or 0.0) >= budget:
                self.cancel(run_id, store)  # the budget cap: a graceful cancel keeps adapter and checkpoint
                budget = None
            if not events and self._remote_status(run_id, store) not in ("running", "unknown"):
                last = self._replay_history(run_id, path, last)
                self._record_end(run_id, store, path)
                return

    def _record_end(self, run_id: str, store: RunStore, path: Path) -> None:
        """The call is over but the stream has no terminal event (killed, crashed, out of memory, error at
        container start, timeout, retries exhausted): record one with Modal's reason and the log tail."""
        last = last_event(path)
        if last is not None and last.terminal:
            return
        from ..failures import from_reason
        from ..runs import EventWriter

        status = self._remote_status(run_id, store)
        reason = status.partition(": ")[2] or f"the Modal call ended ({status}) without a last event"
        try:
            tail = self.client.read_log_tail(run_id)
        except Exception:  # noqa: BLE001 — the reason matters more than the tail
            tail = ""
        writer = EventWriter(path, run_id)
        try:
            if status.startswith("cancelled") or self._meta(run_id, store).get("hard_cancel"):
                writer.emit("cancelled", hard=True,
                            message=f"the Modal container was stopped on request ({reason}); events and "
                                    "checkpoints committed so far are kept")
            else:
                from_reason("ModalCallFailed", reason, tail).report(writer.emit)
        finally:
            writer.close()

    def _replay_history(self, run_id: str, path: Path, last: int) -> int:
        try:
            history = self.client.read_history(run_id)
        except Exception:
            return last
        if not history:
            return last
        older = [Event.from_json(line) for line in history.decode("utf-8").splitlines() if line.strip()]
        fresh = [e for e in older if e.seq > last]
        _append(path, fresh)
        return fresh[-1].seq if fresh else last

    def _remote_status(self, run_id: str, store: RunStore) -> str:
        cached = self._status.get(run_id)
        if cached and time.monotonic() - cached[0] < STATUS_CACHE_S:
            return cached[1]
        try:
            status = self.client.call_status(self._call_id(run_id, store))
        except Exception:
            status = "unknown"
        self._status[run_id] = (time.monotonic(), status)
        return status

    @staticmethod
    def _meta(run_id: str, store: RunStore) -> dict[str, Any]:
        try:
            return json.loads((store.require(run_id) / "modal.json").read_text())
        except FileNotFoundError:
            raise ModalSetupError(f"run {run_id} has no Modal call recorded") from None

    @classmethod
    def _call_id(cls, run_id: str, store: RunStore) -> str:
        return cls._meta(run_id, store)["call_id"]

    def _upload_if_local(self, data: str) -> str:
        """Local files go to the Volume (hub ids and packaged samples are loaded remotely)."""
        if not os.path.exists(os.path.expanduser(data)):
            return data
        local = os.path.expanduser(data)
        digest = hashlib.sha256(Path(local).read_bytes()).hexdigest()[:16] if os.path.isfile(local) else \
            hashlib.sha256(local.encode()).hexdigest()[:16]
        remote = f"/data/{digest}/{os.path.basename(local.rstrip('/'))}"
        size = sum(p.stat().st_size for p in Path(local).rglob("*") if p.is_file()) if os.path.isdir(local) \
            else os.path.getsize(local)
        print(f"uploading {local} ({size / 1e6:,.1f} MB) to the Modal Volume…", end=" ", flush=True)
        self.client.upload(local, remote)
        print("done", flush=True)
        return REMOTE_RUNS_ROOT + remote


def _append(path: Path, events: list[Event]) -> None:
    """Mirror remote events verbatim (their own seq numbers), each line flushed and fsync'd."""
    if not events:
        return
    with open(path, "a", encoding="utf-8") as handle:
        for event in events:
            handle.write(event.to_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def deploy() -> str:
    """Deploy the nbfinetune app (image build progress is printed); returns the app name. Records the
    package version it deployed, so a kernel with another version redeploys instead of running old code."""
    import modal

    from .._version import __version__
    from . import modal_app

    require_credentials()
    with modal.enable_output():
        modal_app.app.deploy(name=modal_app.APP_NAME)
    modal.Dict.from_name(modal_app.META_DICT, create_if_missing=True)["version"] = __version__
    return modal_app.APP_NAME


class RealModalClient:
    """The only code that calls Modal; tested through the real modal library against tests/modal_fake."""

    def __init__(self) -> None:
        import modal  # noqa: F401 — fail early with a clear message if the package is broken

        from . import modal_app

        self.app = modal_app

    def check_ready(self) -> None:
        import modal

        from .._version import __version__

        require_credentials()
        try:
            modal.Cls.from_name(self.app.APP_NAME, "Trainer").hydrate()
        except modal.exception.AuthError as exc:
            raise ModalSetupError(f"Modal rejected the credentials: {exc}") from None
        except modal.exception.NotFoundError:
            raise ModalAppNotDeployed("the nbfinetune app is not deployed to Modal yet: "
                                      "run `nbfinetune deploy`") from None
        deployed = modal.Dict.from_name(self.app.META_DICT, create_if_missing=True).get("version")
        if deployed != __version__:
            raise ModalAppOutdated("the nbfinetune app deployed to Modal is version "
                                   f"{deployed or 'unknown'}, this kernel has {__version__}")

    def deploy(self) -> None:
        deploy()

    def upload(self, local_path: str, remote_path: str) -> None:
        with self._volume().batch_upload(force=True) as batch:
            if os.path.isdir(local_path):
                batch.put_directory(local_path, remote_path)
            else:
                batch.put_file(local_path, remote_path)

    def write_history(self, run_id: str, data: bytes) -> None:
        import io

        with self._volume().batch_upload(force=True) as batch:
            batch.put_file(io.BytesIO(data), f"/{run_id}/{EVENTS_FILE}")

    def _volume(self) -> Any:
        import modal

        return modal.Volume.from_name(self.app.RUNS_VOLUME, create_if_missing=True)

    def _flags(self) -> Any:
        import modal

        return modal.Dict.from_name(self.app.CANCEL_DICT, create_if_missing=True)

    def spawn(self, config: dict[str, Any], run_id: str, gpu: str) -> str:
        import modal

        self._flags().pop(run_id, None)  # a Dict key outlives the run: an old cancel would stop this one
        trainer = modal.Cls.from_name(self.app.APP_NAME, "Trainer").with_options(gpu=gpu)
        return trainer().train.spawn(config, run_id).object_id

    def poll_events(self, run_id: str, timeout_s: float) -> list[dict[str, Any]]:
        import queue as stdlib_queue

        import modal

        events = modal.Queue.from_name(self.app.EVENTS_QUEUE, create_if_missing=True)
        try:
            return list(events.get_many(500, timeout=timeout_s, partition=run_id))
        except stdlib_queue.Empty:  # modal raises it when nothing arrives in time; it never returns []
            return []

    def read_history(self, run_id: str) -> bytes | None:
        try:
            return b"".join(self._volume().read_file(f"{run_id}/{EVENTS_FILE}"))
        except FileNotFoundError:
            return None

    def read_log_tail(self, run_id: str, lines: int = 15) -> str:
        from .remote import CONTAINER_LOG

        try:
            text = b"".join(self._volume().read_file(f"{run_id}/{CONTAINER_LOG}")).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])

    def call_status(self, call_id: str) -> str:
        import modal

        try:
            result = modal.FunctionCall.from_id(call_id).get(timeout=0)
        except TimeoutError:
            return "running"
        except modal.exception.Error as exc:
            text = str(exc) or type(exc).__name__
            if "cancel" in text.lower() or "terminated" in text.lower():
                return f"cancelled: {text}"
            return f"failed: {type(exc).__name__}: {text}"
        except Exception as exc:  # noqa: BLE001 — the container's own exception, re-raised by modal
            return f"failed: {type(exc).__name__}: {exc}"
        return "finished" if not isinstance(result, dict) else result.get("status", "finished")

    def cancel(self, call_id: str, run_id: str, hard: bool) -> None:
        import modal

        self._flags()[run_id] = True
        if hard:
            modal.FunctionCall.from_id(call_id).cancel()

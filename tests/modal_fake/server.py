"""A fake of Modal's control plane on loopback: a grpclib server implementing the `ModalClient` service
methods that the real `modal` client calls for nbfinetune, plus an aiohttp server for blob and Volume
block transfers. Tests point the unpatched library at it with MODAL_SERVER_URL and token env vars.

Semantics kept as Modal's (checked in modal 1.6.4's client): a full Queue partition (5,000 items)
answers RESOURCE_EXHAUSTED, an empty `QueueGet` waits its timeout and answers no values; Dict keys live
until deleted; a container sees the Volume as of its start plus its own writes, and others see them
only after its `commit`; a call's result arrives `result_delay_s` after its body returns. The
"containers" are threads of the test process that run a handler (see containers.py); each has its own
token, so the server knows which container commits, and a killed container's calls are refused.
Methods not implemented answer UNIMPLEMENTED with the method's name.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grpclib import GRPCError, Status
from grpclib.server import Server
from modal_proto import api_grpc, api_pb2

PARTITION_LIMIT = 5000
FUNCTION_CALL_RESULT_DELAY_S = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class Container:
    token: str
    call_id: str
    attempt: int
    mounts: dict[str, Path]  # volume id -> this container's view of it
    alive: bool = True
    preempted: bool = False
    ended: api_pb2.GenericResult | None = None  # how this attempt failed (timeout, crash): may be retried
    thread: threading.Thread | None = None


@dataclasses.dataclass
class Call:
    call_id: str
    function_id: str
    method: str
    args: tuple
    kwargs: dict
    options: dict[str, Any]
    result: api_pb2.GenericResult | None = None
    cancelled: bool = False
    containers: list[Container] = dataclasses.field(default_factory=list)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    data_out: list[bytes] = dataclasses.field(default_factory=list)  # a generator's items, serialized
    result_format: int = api_pb2.DATA_FORMAT_PICKLE
    input_id: str = ""


@dataclasses.dataclass
class Function:
    function_id: str
    app_name: str
    tag: str
    definition: api_pb2.Function
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


class ContainerKilled(BaseException):
    """Raised inside a container thread whose container the fake has killed (never caught by our code)."""


class FakeModal:
    """State of the fake workspace; `handlers` maps a function tag ("Trainer.*") to the container body."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.http_port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.blob_url = f"http://127.0.0.1:{self.http_port}"
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        self.apps: dict[str, dict[str, str]] = {}  # deployed app name -> tag -> object id
        self.app_tags: dict[str, str] = {}  # app id -> deployment tag
        self.app_names: dict[str, str] = {}  # app id -> name
        self.app_objects: dict[str, dict[str, str]] = {}
        self.functions: dict[str, Function] = {}
        self.precreated: dict[str, Any] = {}
        self.app_meta: dict[str, dict[str, str]] = {}  # deployed app name -> tags
        self.classes: dict[str, str] = {}  # class id -> service function id
        self.secrets: dict[str, dict[str, str]] = {}  # name -> env
        self.secret_ids: dict[str, str] = {}
        self.queues: dict[str, dict[str, collections.deque]] = {}
        self.dicts: dict[str, dict[bytes, bytes]] = {}
        self.volumes: dict[str, dict[str, bytes]] = {}  # id -> committed files
        self.named: dict[tuple[str, str], str] = {}  # (kind, name) -> id
        self.blobs: dict[str, bytes] = {}
        self.mount_files: dict[str, bytes] = {}  # sha256 -> content
        self.calls: dict[str, Call] = {}
        self.containers: dict[str, Container] = {}
        self.handlers: dict[str, Callable[[FakeModal, Call, Container], Any]] = {}
        self.result_delay_s = FUNCTION_CALL_RESULT_DELAY_S
        # Modal's durations (a function's timeout, retry delays) are multiplied by this: a test lives
        # through a 24-hour timeout in seconds, with the deployed definition's own numbers.
        self.time_scale = 1.0
        self.images: dict[str, api_pb2.Image] = {}  # image id -> its definition (ENV lines, bases)
        self.start_error: str | None = None  # e.g. Modal refusing to start a container
        self.rpc_log: list[str] = []
        self.container_errors: list[tuple[str, BaseException]] = []
        self.queue_changed = threading.Condition(self.lock)

    # --- ids and naming ---------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids):06d}"

    def named_object(self, kind: str, name: str, create: bool, store: dict) -> str:
        with self.lock:
            key = (kind, name)
            if key not in self.named:
                if not create:
                    raise GRPCError(Status.NOT_FOUND, f"{kind.capitalize()} '{name}' not found")
                object_id = self.new_id({"queue": "qu", "dict": "di", "volume": "vo"}[kind])
                store[object_id] = {} if kind != "queue" else collections.defaultdict(collections.deque)
                self.named[key] = object_id
            return self.named[key]

    # --- the Volume as containers see it ----------------------------------------------------------
    def mount(self, volume_id: str, container: Container) -> Path:
        path = self.root / "containers" / container.token / volume_id
        path.mkdir(parents=True, exist_ok=True)
        self._write_committed(volume_id, path)
        container.mounts[volume_id] = path
        return path

    def _write_committed(self, volume_id: str, path: Path) -> None:
        for name, data in dict(self.volumes[volume_id]).items():
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def reload(self, volume_id: str, container: Container) -> None:
        """Modal commits the container's own changes on reload, then shows what others committed; files
        this container has written stay as it wrote them (each run has one writer)."""
        self.commit(volume_id, container)
        path = container.mounts[volume_id]
        for name, data in dict(self.volumes[volume_id]).items():
            target = path / name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    def commit(self, volume_id: str, container: Container) -> None:
        path = container.mounts[volume_id]
        files = {}
        for file in sorted(path.rglob("*")):
            try:
                files[str(file.relative_to(path))] = file.read_bytes()
            except (FileNotFoundError, IsADirectoryError):  # renamed or removed while we looked: as on Modal
                continue
        with self.lock:
            self.volumes[volume_id].update(files)

    def committed_file(self, volume_name: str, path: str) -> bytes | None:
        return self.volumes[self.named[("volume", volume_name)]].get(path.lstrip("/"))

    # --- containers -------------------------------------------------------------------------------
    def container_for(self, metadata: Any) -> Container | None:
        token = dict(metadata or {}).get("x-modal-token-id", "")
        container = self.containers.get(token)
        if container is not None and not container.alive:
            raise GRPCError(Status.PERMISSION_DENIED, "this container was terminated")
        return container

    def kill(self, call_id: str, reason: str, status: int = api_pb2.GenericResult.GENERIC_STATUS_FAILURE) -> None:
        """The container dies now (OOM-killed, crashed, hard-cancelled): its uncommitted writes are lost,
        and Modal reports `reason` as the call's result."""
        call = self.calls[call_id]
        for container in call.containers:
            _stop(container)
        self._finish(call, api_pb2.GenericResult(status=status, exception=reason))

    def crash(self, call_id: str, reason: str) -> None:
        """The running container's process dies (a segfault, a killed process): its uncommitted writes are
        lost and the attempt fails with `reason`; Modal retries the input while the retry policy allows."""
        container = self.calls[call_id].containers[-1]
        container.ended = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
                                                exception=reason)
        _stop(container)

    def _time_out(self, call: Call, container: Container, timeout_secs: int) -> None:
        """The attempt ran past the function's timeout: Modal cancels the input in the container (user code
        gets InputCancellation, its `finally` blocks run) and fails the attempt with TIMEOUT."""
        from modal.exception import InputCancellation

        with self.lock:
            if not container.alive or container.ended is not None:
                return
            container.ended = api_pb2.GenericResult(
                status=api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT,
                exception=f"Task's current input {call.input_id} hit its timeout of {timeout_secs}s")
        _raise_in(container, InputCancellation)

    def _retry_delay_s(self, policy: api_pb2.FunctionRetryPolicy, attempt: int) -> float:
        delay_ms = min(policy.max_delay_ms or 60_000,
                       policy.initial_delay_ms * (policy.backoff_coefficient or 1.0) ** attempt)
        return delay_ms / 1000 * self.time_scale

    def preempt(self, call_id: str) -> None:
        """The running container is preempted: it dies now and Modal restarts the input in a new one."""
        container = self.calls[call_id].containers[-1]
        container.preempted = True
        _stop(container)

    def _finish(self, call: Call, result: api_pb2.GenericResult) -> None:
        with self.lock:
            if call.result is None:
                call.result = result
                call.done.set()

    def start_call(self, call: Call, function: Function) -> None:
        handler = self.handlers.get(function.tag)
        from . import startup

        policy = function.definition.retry_policy
        retries = policy.retries
        timeout_secs = function.definition.timeout_secs or 300

        def run() -> None:
            if self.start_error:
                self._finish(call, api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_INIT_FAILURE,
                                                         exception=self.start_error))
                return
            from modal._serialization import serialize

            for attempt in range(retries + 1):
                refused = startup.definition_error(self, function)
                if refused is not None:  # the container cannot rebuild the function: it never starts
                    from modal.exception import ExecutionError

                    self._finish(call, api_pb2.GenericResult(
                        status=api_pb2.GenericResult.GENERIC_STATUS_INIT_FAILURE,
                        exception=repr(ExecutionError(refused)), data=serialize(ExecutionError(refused))))
                    return
                container = Container(token=self.new_id("ct"), call_id=call.call_id, attempt=attempt, mounts={},
                                      thread=threading.current_thread())
                with self.lock:
                    self.containers[container.token] = container
                    call.containers.append(container)
                timer = threading.Timer(timeout_secs * self.time_scale, self._time_out,
                                        (call, container, timeout_secs))
                timer.daemon = True
                timer.start()
                try:
                    if handler is None:
                        raise RuntimeError(f"no container handler for {function.tag}")
                    value = handler(self, call, container)
                except Preempted:
                    container.alive = False
                    continue
                except BaseException as exc:  # noqa: BLE001 — becomes the call's failure, as on Modal
                    self.container_errors.append((container.token, exc))
                    if container.preempted:
                        continue
                    value = None
                    if container.ended is None:
                        if not container.alive:
                            return
                        container.alive = False
                        if attempt < retries and not isinstance(exc, ContainerKilled):
                            continue
                        self._finish(call, api_pb2.GenericResult(
                            status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE, exception=repr(exc),
                            data=serialize(exc)))
                        return
                finally:
                    timer.cancel()
                if container.ended is not None:  # timed out or crashed: retried while the policy allows
                    container.alive = False
                    if attempt < retries:
                        time.sleep(self._retry_delay_s(policy, attempt))
                        continue
                    self._finish(call, container.ended)
                    return
                if container.preempted:
                    continue
                if not container.alive:
                    return
                container.alive = False
                time.sleep(self.result_delay_s)  # final commits, container shutdown
                if hasattr(value, "__next__"):  # a generator method: items stream out, then GeneratorDone
                    for item in value:
                        call.data_out.append(serialize(item))
                    call.result_format = api_pb2.DATA_FORMAT_GENERATOR_DONE
                    value = api_pb2.GeneratorDone(items_total=len(call.data_out))
                    self._finish(call, api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS,
                                                             data=value.SerializeToString()))
                    return
                self._finish(call, api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS,
                                                         data=serialize(value)))
                return
            self._finish(call, api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
                                                     exception="Function exceeded its retries after preemption"))

        threading.Thread(target=run, daemon=True, name=f"fake-modal-{call.call_id}").start()


def _stop(container: Container) -> None:
    """Mark the container dead (the fake refuses its calls) and end its thread with ContainerKilled."""
    container.alive = False
    _raise_in(container, ContainerKilled)


def _raise_in(container: Container, exc: type[BaseException]) -> None:
    import ctypes

    thread = container.thread
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


class Preempted(Exception):
    """Raised by a container handler to act out a preemption: Modal restarts the input."""


def _unimplemented(name: str):
    async def handler(self, stream) -> None:
        await stream.recv_message()
        raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not implemented by the nbfinetune fake of Modal")

    return handler


def _make_servicer(fake: FakeModal):
    from . import handlers

    namespace = {name: _unimplemented(name) for name in api_grpc.ModalClientBase.__abstractmethods__}
    for part in (handlers.Handlers, handlers.AppHandlers):
        for name, value in vars(part).items():
            if name[0].isupper() and not name.startswith("_"):
                namespace[name] = value
    servicer = type("FakeModalServicer", (api_grpc.ModalClientBase,), namespace)()
    servicer.fake = fake
    return servicer


@contextlib.contextmanager
def fake_modal(root: Path, env: dict[str, str] | None = None) -> Iterator[FakeModal]:
    """Start the fake on loopback and point the modal client of this process at it."""
    from aiohttp import web

    from .handlers import blob_routes
    from .web import web_routes

    fake = FakeModal(root)
    started = threading.Event()
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop: list[asyncio.Event] = []

    async def main() -> None:
        server = Server([_make_servicer(fake)])
        await server.start("127.0.0.1", fake.port)
        web_app = web.Application(client_max_size=1 << 30)
        web_app.add_routes(blob_routes(fake))
        web_app.add_routes(web_routes(fake))
        runner = web.AppRunner(web_app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", fake.http_port).start()
        loop_box.append(asyncio.get_running_loop())
        stop.append(asyncio.Event())
        started.set()
        await stop[0].wait()
        server.close()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True, name="fake-modal-server")
    thread.start()
    started.wait(30)
    saved = {k: os.environ.get(k) for k in ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")}
    os.environ.update(MODAL_SERVER_URL=fake.url, MODAL_TOKEN_ID="ak-notebook", MODAL_TOKEN_SECRET="as-notebook",
                      **(env or {}))
    try:
        yield fake
    finally:
        for container in list(fake.containers.values()):
            _stop(container)
        for container in list(fake.containers.values()):
            if container.thread is not None:
                container.thread.join(30)  # torch in a thread at interpreter exit aborts the process
        loop_box[0].call_soon_threadsafe(stop[0].set)
        thread.join(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_modal_client()


def _forget_modal_client() -> None:
    """The library caches one client per process (bound to the server URL): drop it between fakes."""
    from modal.client import _Client

    _Client._client_from_env = None


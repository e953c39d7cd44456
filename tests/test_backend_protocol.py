"""What differs between backends is asked of the backend (issue 12): concurrency, launch checks, the chat
model, the serve target, where the adapter lives — and both report a failure through one reporter."""

import json
import signal
import sys
import threading
from types import SimpleNamespace

import pytest

from nbfinetune import api, failures
from nbfinetune.backends import get_backend
from nbfinetune.backends.local import LocalBackend
from nbfinetune.backends.modal_backend import ModalBackend
from nbfinetune.config import RunConfig
from nbfinetune.events import Event
from nbfinetune.runs import EventWriter, RunStore



def _run(store: RunStore, *events: tuple[str, dict], backend: str = "local") -> api.Run:
    run_id = store.create(RunConfig(backend=backend))
    writer = EventWriter(store.events_path(run_id), run_id)
    for kind, payload in events:
        writer.emit(kind, **payload)
    writer.close()
    return api.Run(run_id, store)


STARTED = ("started", {"model": "m", "device": "cpu", "total_steps": 3})


# --- concurrency and the serve target's kind ---------------------------------------------------------
def test_local_runs_take_turns_and_serve_in_this_process():
    local = LocalBackend()
    assert local.max_concurrent_runs == 1
    assert local.serves_in_process is True


def test_modal_runs_fan_out_and_serve_from_a_deployment(modal_client):
    modal = get_backend("modal")
    assert modal.max_concurrent_runs is None
    assert modal.serves_in_process is False


# --- launch checks -----------------------------------------------------------------------------------
def _too_big(monkeypatch):
    monkeypatch.setattr("nbfinetune.planner.plan_memory", lambda model, config: SimpleNamespace(total=10**15))


def test_local_launch_check_refuses_nothing(monkeypatch):
    _too_big(monkeypatch)  # the local worker reports what does not fit; nothing is billed
    LocalBackend().check_launch(RunConfig(gpu="T4"))


def test_modal_launch_check_refuses_a_run_that_cannot_fit_its_gpu(monkeypatch):
    from nbfinetune.planner import DoesNotFit

    _too_big(monkeypatch)
    with pytest.raises(DoesNotFit, match="but T4 has .* GiB; use gpu='auto'"):
        ModalBackend(client=None).check_launch(RunConfig(gpu="T4"))
    monkeypatch.setattr("nbfinetune.planner.plan_memory", lambda model, config: SimpleNamespace(total=1))
    ModalBackend(client=None).check_launch(RunConfig(gpu="T4"))


def test_modal_launch_check_leaves_an_unreadable_model_to_the_run(monkeypatch):
    def unreadable(model, config):
        raise OSError("no config.json")

    monkeypatch.setattr("nbfinetune.planner.plan_memory", unreadable)
    ModalBackend(client=None).check_launch(RunConfig(gpu="T4"))


def test_finetune_asks_the_backend_before_anything_is_created(modal_client, home, tiny_model, monkeypatch):
    from nbfinetune.planner import DoesNotFit

    _too_big(monkeypatch)
    with pytest.raises(DoesNotFit):
        api.finetune(model=tiny_model, backend="modal", gpu="T4", steps=2, eval_samples=0, display=False)
    assert modal_client.spawned == [] and RunStore().ids() == []


# --- the chat model ----------------------------------------------------------------------------------
def test_local_chat_model_says_why_a_run_has_no_adapter(home):
    store = RunStore()
    failed = _run(store, STARTED, ("failed", {"error": "RuntimeError", "message": "boom"}))
    with pytest.raises(RuntimeError, match=f"run {failed.id} failed without an adapter: .*boom.* fix the"):
        LocalBackend().chat_model(failed)
    running = _run(store, STARTED)
    with pytest.raises(RuntimeError, match="has no adapter yet .*wait for it to finish or cancel it"):
        LocalBackend().chat_model(running)


def test_a_runs_chat_asks_its_own_backend(home, monkeypatch):
    store = RunStore()
    run = _run(store, STARTED, backend="modal")
    asked = []

    class Backend(ModalBackend):
        def chat_model(self, run):
            asked.append(run.id)
            raise LookupError("asked")

    run._backend = Backend(client=None)
    with pytest.raises(LookupError, match="asked"):
        run.chat("hi")
    assert asked == [run.id]


def test_modal_chat_model_is_the_adapter_served_on_modal(monkeypatch):
    from nbfinetune.backends import modal_chat

    made = []
    monkeypatch.setattr(modal_chat, "RemoteChatModel", lambda run_id: made.append(run_id) or "remote")
    assert ModalBackend(client=None).chat_model(SimpleNamespace(id="r1")) == "remote" and made == ["r1"]


def test_modal_chat_model_checks_the_volume_before_starting_a_container(modal_fake, home):
    run = _run(RunStore(), STARTED, backend="modal")
    with pytest.raises(RuntimeError, match=f"run {run.id} has no adapter on the Modal Volume yet"):
        run.backend.chat_model(run)
    assert not [c for c in modal_fake.calls.values() if c.method == "generate"]


# --- the serve target --------------------------------------------------------------------------------
def test_serve_goes_to_the_named_backends_target(home, monkeypatch):
    store = RunStore()
    run = _run(store, STARTED)
    calls = []
    from nbfinetune.serve import local  # `nbfinetune.serve` as a dotted name is the serve() function

    monkeypatch.setattr(local, "serve_runs",
                        lambda runs, **options: calls.append(("local", [r.id for r in runs], options)) or "L")
    monkeypatch.setattr("nbfinetune.backends.modal_serve.serve_modal",
                        lambda runs, **options: calls.append(("modal", [r.id for r in runs], options)) or "M")
    assert api.serve([run.id], store=store, port=9) == "L"
    assert api.serve([run.id], backend="modal", store=store, quiet=True) == "M"
    # Outside a notebook a new key may be printed; in one, the saved outputs must not hold it.
    assert calls == [("local", [run.id], {"show_key": True, "port": 9}),
                     ("modal", [run.id], {"show_key": True, "quiet": True})]
    monkeypatch.setattr(api, "_in_notebook", lambda: True)
    api.serve([run.id], store=store)
    assert calls[-1][2] == {"show_key": False}
    with pytest.raises(ValueError, match="backend: 'local' or 'modal', got 'gcp'"):
        api.serve([run.id], backend="gcp", store=store)


def test_local_serve_does_not_print_the_key_when_told_not_to(home, tiny_model, monkeypatch, capsys):
    from nbfinetune.serve import local

    started = []
    monkeypatch.setattr(local, "serve_models", lambda specs, *args, **kwargs: started.append(kwargs) or
                        SimpleNamespace(api_key="k", base_url="u", models=[]))
    run = SimpleNamespace(id="r", adapter_path="/a", status="finished", path=home,
                          config=SimpleNamespace(model=tiny_model, name=None))
    home.mkdir(parents=True, exist_ok=True)
    LocalBackend().serve([run], show_key=False, quiet=True)
    assert started[-1]["show_key"] is False


# --- where the adapter lives -------------------------------------------------------------------------
def test_only_a_modal_runs_adapter_is_on_the_volume():
    from nbfinetune.backends import modal_app

    assert LocalBackend().remote_adapter_path("r1") is None
    assert ModalBackend(client=None).remote_adapter_path("r1") == f"{modal_app.RUNS_ROOT}/r1/adapter"


# --- one failure reporter ----------------------------------------------------------------------------
def _oom(*_args, **_kwargs):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")


def test_worker_and_remote_body_report_an_exception_the_same_way(tmp_path, monkeypatch):
    from nbfinetune import worker
    from nbfinetune.backends.remote import remote_train

    monkeypatch.setattr("nbfinetune.core.trainer.train", _oom)
    monkeypatch.setattr(signal, "signal", lambda *_args: None)  # run_child's handlers: not in pytest's
    config = RunConfig()
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    (local_dir / "config.json").write_text(config.to_json())
    assert worker.run_child(local_dir) == 1
    local = json.loads((local_dir / "events.jsonl").read_text().splitlines()[-1])
    published: list[dict] = []
    result = remote_train(config.to_dict(), "remote", str(tmp_path), published.extend, lambda: None,
                          lambda: False)
    remote = published[-1]
    assert local["type"] == remote["type"] == "failed"
    assert local["error"] == remote["error"] == "RuntimeError"
    assert local["message"] == remote["message"] == (
        f"out of memory: CUDA out of memory. Tried to allocate 2.00 GiB — {failures.OOM_HINT}")
    assert "Tried to allocate" in local["traceback"] and "Tried to allocate" in remote["traceback"]
    assert result == {"status": "failed", "error": f"RuntimeError: {remote['message']}"}


def test_a_killed_trainer_is_reported_the_same_locally_and_in_a_multi_gpu_container(tmp_path, monkeypatch):
    """The supervisor (local) and the container's torchrun loop (Modal, several GPUs) both see a trainer
    die without a last event: both say it was killed, most often for memory, and what to try."""
    from nbfinetune.backends import remote

    suicide = [sys.executable, "-u", "-c",
               "import os, signal; print('loading'); os.kill(os.getpid(), signal.SIGKILL)"]
    monkeypatch.setattr("nbfinetune.worker.child_command", lambda run_dir, processes: suicide)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    result = remote._train_in_processes(run_dir, 2, lambda batch: None, lambda: None, lambda: False)
    last = Event.from_json((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert result == {"status": "failed", "exit_code": -signal.SIGKILL}
    expected = failures.from_exit(-signal.SIGKILL, run_dir / "container.log").fields()
    assert {k: last[k] for k in expected} == expected
    assert last["error"] == "Killed(SIGKILL)" and "ran out of memory" in last["message"]
    assert failures.OOM_HINT in last["message"] and "loading" in last["traceback"]


def test_failure_fields_are_redacted(monkeypatch):
    token = "hf_" + "y" * 30
    monkeypatch.setenv("HF_TOKEN", token)
    failure = failures.from_exception(FileNotFoundError(f"/data/{token}.jsonl"))
    emitted = []
    failure.report(lambda type, **payload: emitted.append((type, payload)))
    assert emitted[0][0] == "failed" and token not in json.dumps(emitted)
    assert failures.from_reason("ModalCallFailed", "Container OOMKilled").message.endswith(failures.OOM_HINT)


# --- a sweep asks how many runs train at once --------------------------------------------------------
class _TwoAtATime(LocalBackend):
    """Runs that take 0.3 s each; records how many were training whenever one started."""

    max_concurrent_runs = 2

    def __init__(self):
        self.training: set[str] = set()
        self.seen: list[int] = []
        self.lock = threading.Lock()

    def launch(self, config, store):
        run_id = store.create(config)
        writer = EventWriter(store.events_path(run_id), run_id)
        writer.emit(STARTED[0], **STARTED[1])
        with self.lock:
            self.training.add(run_id)
            self.seen.append(len(self.training))

        def finish():
            with self.lock:
                self.training.discard(run_id)
            writer.emit("finished", adapter_path=None)
            writer.close()

        threading.Timer(0.3, finish).start()
        return run_id

    def is_alive(self, run_id, store):
        with self.lock:
            return run_id in self.training


def test_a_sweep_keeps_as_many_runs_training_as_the_backend_allows(home, tiny_model, monkeypatch):
    from nbfinetune.sweep import Sweep

    backend = _TwoAtATime()
    monkeypatch.setattr("nbfinetune.sweep.get_backend", lambda name: backend)
    sweep = Sweep({"lr": [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]}, model=tiny_model, steps=2, eval_samples=0)
    assert sweep._done.wait(30)
    assert len(sweep.runs) == 5 and all(run.status == "finished" for run in sweep.runs)
    assert max(backend.seen) == 2 and backend.seen[:2] == [1, 2]

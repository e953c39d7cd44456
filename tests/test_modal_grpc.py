"""The Modal backend through the real, unpatched `modal` library against a fake of Modal's control plane
(tests/modal_fake: gRPC on loopback, blobs over local HTTP); containers run our real container body with
the tiny model in threads. What only real Modal can show is listed in the README."""

import json

import pytest

import nbfinetune as nbft
from nbfinetune import api
from nbfinetune.backends.modal_backend import ModalBackend, RealModalClient

from tests.helpers import wait_for
from tests.modal_fake import containers

# The train tier: each test trains the tiny model in a fake Modal container.
pytestmark = pytest.mark.train


def _seqs(run):
    return [e.seq for e in run.events()]


def test_launch_deploys_streams_and_wait_returns_after_the_call_ends(modal_fake, tiny_model, capsys):
    run = api.finetune(model=tiny_model, backend="modal", gpu="H100", steps=4, eval_samples=0, display=False)
    summary = run.wait(timeout=120, progress=False)
    assert summary.status == "finished", run.events()[-1]
    assert _seqs(run) == list(range(1, len(run.events()) + 1))
    assert "deploying it now" in capsys.readouterr().out
    call = next(iter(modal_fake.calls.values()))
    assert call.options["gpu"] == ["H100"]
    stored = json.loads(modal_fake.committed_file("nbfinetune-runs", f"{run.id}/config.json"))
    assert stored["train"]["save_every"] == 50


def _call(fake, run):
    return [c for c in fake.calls.values() if c.args[1] == run.id][-1]


def _wait_steps(run, n=1):
    wait_for(lambda: sum(e.type == "step" for e in run.events()) >= n, timeout=120)


def test_a_container_that_dies_silently_ends_the_run_with_modals_reason_and_log_tail(modal_fake, tiny_model):
    """Item 1a/1e: an empty poll (queue.Empty) leads to the status check; OOM-kill → failed with reason."""
    run = api.finetune(model=tiny_model, backend="modal", steps=100000, eval_samples=0, display=False)
    _wait_steps(run)
    modal_fake.kill(_call(modal_fake, run).call_id, "Container OOMKilled (exit code 137)")
    summary = run.wait(timeout=60, progress=False)
    last = run.events()[-1]
    assert summary.status == "failed" and last.type == "failed"
    assert "OOMKilled" in last["message"] and "batch_size" in last["message"]  # the out-of-memory hint
    assert f"nbfinetune {run.id}: starting" in last["traceback"]  # the container log's tail, from the Volume
    assert _seqs(run) == list(range(1, len(run.events()) + 1))


def test_an_error_at_container_start_is_failed_with_modals_message(modal_fake, tiny_model):
    modal_fake.start_error = "Secret 'huggingface-secret' not found"
    run = api.finetune(model=tiny_model, backend="modal", steps=3, eval_samples=0, display=False)
    summary = run.wait(timeout=60, progress=False)
    assert summary.status == "failed" and "huggingface-secret" in run.events()[-1]["message"]


def test_hard_cancel_is_cancelled_with_a_reason(modal_fake, tiny_model):
    run = api.finetune(model=tiny_model, backend="modal", steps=100000, eval_samples=0, display=False)
    _wait_steps(run)
    run.cancel(hard=True)
    summary = run.wait(timeout=60, progress=False)
    assert summary.status == "cancelled" and "on request" in run.events()[-1]["message"]


def test_graceful_cancel_then_resume_is_one_continuous_curve(modal_fake, tiny_model, tmp_path):
    """Items 1c and 1d: resume sends the remote config (uploaded data, save_every) and the old cancel
    flag does not stop the resumed run."""
    import shutil

    from nbfinetune.data.sources import sample_files

    data = tmp_path / "train.jsonl"
    shutil.copy(sample_files("people")[0], data)
    run = api.finetune(model=tiny_model, data=str(data), backend="modal", steps=30, save_every=5,
                       eval_samples=0, display=False)
    _wait_steps(run, 2)
    run.cancel()
    assert run.wait(timeout=120, progress=False).status == "cancelled"
    run.resume()
    summary = run.wait(timeout=120, progress=False)
    assert summary.status == "finished", run.events()[-1]
    resumed = _call(modal_fake, run).args[0]
    assert resumed["data"]["path"].startswith("/runs/data/") and resumed["train"]["save_every"] == 5
    events = run.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    steps = [e["step"] for e in events if e.type == "step"]
    assert steps[-1] == 30 and steps == sorted(set(steps))


def test_preemption_resumes_from_the_last_checkpoint_with_dense_seq(modal_fake, tiny_model):
    """Item 1k: the retry continues from the Volume's committed history; nothing published is reused."""
    run = api.finetune(model=tiny_model, backend="modal", steps=24, save_every=4, eval_samples=0, display=False)
    wait_for(lambda: any(e.type == "checkpoint" for e in run.events()), timeout=120)
    _wait_steps(run, 6)
    modal_fake.preempt(_call(modal_fake, run).call_id)
    summary = run.wait(timeout=120, progress=False)
    assert summary.status == "finished", run.events()[-1].payload
    assert len(_call(modal_fake, run).containers) == 2, modal_fake.container_errors
    events = run.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    steps = [e["step"] for e in events if e.type == "step"]
    # Steps after the last committed checkpoint are done again by the retry, from that checkpoint.
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), len(steps))
    assert steps[:restart] == list(range(1, restart + 1))
    assert steps[restart:] == list(range(steps[restart - 1] + 1 if restart == len(steps) else steps[restart], 25))
    assert restart == len(steps) or (steps[restart] - 1) % 4 == 0
    volume = modal_fake.committed_file("nbfinetune-runs", f"{run.id}/events.jsonl").decode().splitlines()
    assert [json.loads(line)["seq"] for line in volume] == [e.seq for e in events]


class KernelThatDies(RealModalClient):
    """The modal client of a kernel about to restart: after `dead` is set its mirror thread ends."""

    dead = False

    def poll_events(self, run_id, timeout_s):
        if self.dead:
            raise SystemExit("this kernel is gone")
        return super().poll_events(run_id, timeout_s)


def test_kernel_restart_attach_replays_then_follows(modal_fake, tiny_model, monkeypatch):
    from nbfinetune.runs import RunStore

    old_kernel = ModalBackend(KernelThatDies())
    monkeypatch.setattr("nbfinetune.backends._modal_backend", {"instance": old_kernel})
    run = api.finetune(model=tiny_model, backend="modal", steps=30, eval_samples=0, display=False)
    _wait_steps(run, 2)
    old_kernel.client.dead = True
    wait_for(lambda: not old_kernel._mirrors[run.id].is_alive(), timeout=60)
    path = RunStore().events_path(run.id)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:1]))  # a copy that lost its tail
    reattached = api.Run(run.id, RunStore(), ModalBackend(RealModalClient()))
    assert reattached.wait(timeout=120, progress=False).status == "finished"
    events = reattached.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e["step"] for e in events if e.type == "step"] == list(range(1, 31))


def test_a_full_partition_with_nobody_draining_never_blocks_training(modal_fake, tiny_model):
    """Item 1b: 6,000 events' worth of unread queue: training finishes, the Volume has every event."""
    import modal

    from nbfinetune.backends import modal_app
    from tests.modal_fake.server import Call, Container

    events = modal.Queue.from_name(modal_app.EVENTS_QUEUE, create_if_missing=True)
    events.put_many([{"filler": i} for i in range(5000)], partition="quiet")
    modal.Volume.from_name(modal_app.RUNS_VOLUME, create_if_missing=True).hydrate()
    config = api.build_config(model=tiny_model, steps=6, eval_samples=0).to_dict()
    call = Call("fc-direct", "fu", "train", (config, "quiet"), {}, {})
    container = Container(token="ct-direct", call_id=call.call_id, attempt=0, mounts={})
    modal_fake.containers[container.token] = container
    result = containers.trainer(modal_fake, call, container)
    assert result["status"] == "finished"
    history = modal_fake.committed_file("nbfinetune-runs", "quiet/events.jsonl").decode().splitlines()
    assert json.loads(history[-1])["type"] == "finished"
    assert events.len(partition="quiet") == 5000


def test_a_sweep_of_four_runs(modal_fake, tiny_model):
    sweep = nbft.sweep({"lr": [1e-4, 2e-4], "r": [2, 4]}, model=tiny_model, backend="modal", gpu="L4", steps=2,
                      eval_samples=0)
    assert len(modal_fake.calls) == 4  # all spawned before any was waited on
    table = sweep.wait(timeout=300)
    assert list(table["status"]) == ["finished"] * 4
    assert all(c.options["gpu"] == ["L4"] for c in modal_fake.calls.values())


def test_chat_before_the_adapter_exists_fails_without_starting_a_container(modal_fake, tiny_model):
    """Item 1i: the Volume is checked first; no Chat call is made."""
    from nbfinetune.backends.modal_chat import RemoteChatModel

    modal_fake.handlers.pop("Trainer.*")  # no container will ever write an adapter
    api.finetune(model=tiny_model, backend="modal", steps=2, eval_samples=0, display=False)
    with pytest.raises(RuntimeError, match="no adapter on the Modal Volume yet"):
        RemoteChatModel("no-such-run")
    assert not [c for c in modal_fake.calls.values() if c.method == "generate"]


def test_an_app_deployed_from_another_version_is_redeployed_with_progress(modal_fake, tiny_model, capsys):
    """Item 1l: the deployed version is recorded at deploy and compared at launch."""
    import modal

    from nbfinetune import __version__
    from nbfinetune.backends import modal_app
    from nbfinetune.backends.modal_backend import deploy

    deploy()
    meta = modal.Dict.from_name(modal_app.META_DICT, create_if_missing=True)
    meta["version"] = "0.0.1"
    capsys.readouterr()
    run = api.finetune(model=tiny_model, backend="modal", steps=2, eval_samples=0, display=False)
    printed = capsys.readouterr().out
    assert f"is version 0.0.1, this kernel has {__version__}: redeploying it now" in printed
    assert "Created objects" in printed  # modal's own deploy progress
    assert meta.get("version") == __version__
    assert run.wait(timeout=120, progress=False).status == "finished"


def test_chat_with_the_served_adapter_and_with_the_base_model(modal_fake, tiny_model):
    """Item 1g: the Chat class answers with the adapter, and with the base model when asked."""
    from nbfinetune.backends.modal_chat import RemoteChatModel

    run = api.finetune(model=tiny_model, backend="modal", steps=2, eval_samples=0, display=False)
    assert run.wait(timeout=120, progress=False).status == "finished"
    chat = RemoteChatModel(run.id)
    messages = [{"role": "user", "content": "Who is Ada?"}]
    tuned = "".join(chat.stream(messages, max_new_tokens=8))
    base = "".join(chat.stream(messages, max_new_tokens=8, adapter="base"))
    assert tuned and base
    generate_calls = [c for c in modal_fake.calls.values() if c.method == "generate"]
    assert [c.kwargs["adapter"] for c in generate_calls] == ["default", "base"]


@pytest.fixture
def hf_secret_configured(modal_fake, monkeypatch):
    """A user with a gated model: a Modal secret holding HF_TOKEN, named in NBFINETUNE_MODAL_HF_SECRET before
    deploying, and their own HF_TOKEN in this kernel. modal_app is defined again in that environment (as a
    kernel started with it would), and once more without it afterwards."""
    import importlib

    from nbfinetune.backends import modal_app

    modal_fake.secrets["huggingface-secret"] = {"HF_TOKEN": "hf_from_the_modal_secret"}
    monkeypatch.setenv("HF_TOKEN", "hf_only_in_this_kernel")
    monkeypatch.setenv(modal_app.HF_SECRET_ENV, "huggingface-secret")
    importlib.reload(modal_app)
    yield modal_app
    monkeypatch.undo()
    importlib.reload(modal_app)


def _container_start_checked(fake, run):
    """The Trainer function the run's call started, and the environment its container imported the app in."""
    from tests.modal_fake import startup

    function = fake.functions[_call(fake, run).function_id]
    return function, startup.container_env(fake, function)


def test_a_configured_hf_secret_lets_the_container_start(modal_fake, hf_secret_configured, tiny_model):
    """Item 1f: Modal rebuilds the function in the container by importing modal_app there (the image's ENV
    and the secret's values, nothing of this kernel's) and refuses to start it when its secrets or volumes
    differ from the deployed ones. The fake does the same import in a scrubbed subprocess."""
    run = api.finetune(model=tiny_model, backend="modal", steps=2, eval_samples=0, display=False)
    summary = run.wait(timeout=120, progress=False)
    assert summary.status == "finished", run.events()[-1].payload
    function, env = _container_start_checked(modal_fake, run)
    assert list(function.definition.secret_ids) == [modal_fake.secret_ids["huggingface-secret"]]
    assert env["HF_TOKEN"] == "hf_from_the_modal_secret" and "hf_only_in_this_kernel" not in env.values()
    assert not [k for k in env if k.startswith("MODAL_") and k != "MODAL_IS_REMOTE"]
    assert _call(modal_fake, run).containers  # it started


def test_a_container_whose_app_differs_from_the_deploy_is_refused_with_modals_message(
        modal_fake, hf_secret_configured, tiny_model):
    """The fake's check itself: a container that would import the app without the secret (here: an image
    whose ENV lost the secret's name) is refused as Modal refuses it, and the run fails with that message."""
    from nbfinetune.backends.modal_backend import deploy

    deploy()
    line = f"ENV {hf_secret_configured.HF_SECRET_ENV}="
    for image in modal_fake.images.values():  # as if the image did not carry the deploy-time choice
        kept = [c for c in image.dockerfile_commands if not c.startswith(line)]
        del image.dockerfile_commands[:]
        image.dockerfile_commands.extend(kept)
    run = api.finetune(model=tiny_model, backend="modal", steps=2, eval_samples=0, display=False)
    summary = run.wait(timeout=60, progress=False)
    last = run.events()[-1]
    assert summary.status == "failed" and last.type == "failed"
    assert "Function has 3 dependencies but container got 4 object ids" in last["message"]
    assert "evaluates differently in the local and remote environments" in last["message"]
    assert not _call(modal_fake, run).containers  # no container ever ran the trainer


def _ends_once_with_dense_seq(run):
    events = run.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events if e.terminal] == ["failed"], [e.type for e in events][-5:]
    return events[-1]


def test_the_function_timeout_ends_the_run_with_modals_timeout_status(modal_fake, tiny_model):
    """Item 1e: each attempt runs until the deployed timeout (24 h, lived through at time_scale); Modal
    cancels the input in the container, retries it with a fresh timeout, and after the last retry the call
    ends with GENERIC_STATUS_TIMEOUT (FunctionTimeoutError in the client): failed once, Modal's message."""
    from nbfinetune.backends import modal_app

    modal_fake.time_scale = 3.0 / modal_app.TIMEOUT_S  # each attempt: 3 s
    run = api.finetune(model=tiny_model, backend="modal", steps=100000, eval_samples=0, display=False)
    summary = run.wait(timeout=120, progress=False)
    last = _ends_once_with_dense_seq(run)
    assert summary.status == "failed"
    assert "FunctionTimeoutError" in last["message"]
    assert f"hit its timeout of {modal_app.TIMEOUT_S}s" in last["message"]
    assert len(_call(modal_fake, run).containers) == 4  # Retries(max_retries=3): each with a fresh timeout
    assert f"nbfinetune {run.id}: starting" in last["traceback"]  # the container log's tail


def test_retries_exhausted_end_the_run_failed_once_with_modals_reason_and_log_tail(modal_fake, tiny_model):
    """Item 1e: every attempt's container dies mid-training (the wording of the reason is the fake's); Modal
    retries the input 3 times, each retry resumes from the Volume, and the last failure ends the call."""
    modal_fake.time_scale = 0.001  # Retries(initial_delay=10.0) between attempts: 10 ms here
    run = api.finetune(model=tiny_model, backend="modal", steps=100000, eval_samples=0, display=False)
    call = _call(modal_fake, run)
    for attempt in range(4):
        seen = sum(e.type == "step" for e in run.events())
        wait_for(lambda attempt=attempt, seen=seen: len(call.containers) == attempt + 1 and
                 sum(e.type == "step" for e in run.events()) > seen, timeout=120)
        modal_fake.crash(call.call_id, "Runner failed with exit code: 139 (SIGSEGV)")
    summary = run.wait(timeout=60, progress=False)
    last = _ends_once_with_dense_seq(run)
    assert summary.status == "failed" and "exit code: 139" in last["message"]
    assert len(call.containers) == 4
    assert last["traceback"].count(f"nbfinetune {run.id}: starting") >= 1  # the container log's tail


def _rank_pids(rank):
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "nbfinetune.worker" in " ".join(p.info["cmdline"] or []) and "--child" in p.info["cmdline"]
            and p.environ().get("RANK") == str(rank)]


def test_a_crashed_rank_of_a_multi_gpu_run_is_failed_with_the_oom_hint(modal_fake, tiny_model):
    """Item 1e: gpu="H100:2" runs 2 trainers under torchrun in the container (gloo on CPU here); rank 1 is
    SIGKILLed (what the out-of-memory killer sends), torchrun ends the rest, rank 0 never reports: the
    container body records `failed` with the rank's signal and the out-of-memory hint."""
    import os
    import signal

    run = api.finetune(model=tiny_model, backend="modal", gpu="H100:2", steps=100000, batch_size=4,
                       eval_samples=0, display=False)
    _wait_steps(run, 2)
    pids = _rank_pids(1)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    summary = run.wait(timeout=120, progress=False)
    last = _ends_once_with_dense_seq(run)
    assert summary.status == "failed"
    assert "SIGKILL" in last["message"] and "batch_size" in last["message"] and "rank 1" in last["message"]
    assert last["traceback"]  # torchrun's report, from the container log

"""Modal backend without network: the app definition, the remote body run locally with the tiny model,
and the client side against a fake of our thin ModalClient interface."""

import json
import os
import re
import shutil

import pytest

from nbfinetune import api
from nbfinetune.backends.modal_backend import ModalBackend, ModalSetupError
from nbfinetune.backends.remote import remote_train
from nbfinetune.config import ConfigError
from nbfinetune.data.sources import sample_files
from nbfinetune.pricing import UnknownGPU, cost_so_far, estimate, parse_gpu
from nbfinetune.runs import RunStore

from tests.helpers import wait_for


def test_app_definition_imports_light_and_declares_gpu_volume_retries():
    import subprocess
    import sys

    code = ("import sys, warnings; warnings.simplefilter('ignore'); from nbfinetune.backends import modal_app as m; "
            "print(any(k in sys.modules for k in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MODAL_TOKEN_ID="", MODAL_TOKEN_SECRET=""))
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    import warnings

    from nbfinetune.backends import modal_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = modal_app.app.registered_functions["Trainer.*"]._spec_
    assert spec.gpus == "A10" and list(spec.volumes) == ["/runs", "/hf-cache"]
    assert spec.cpu == modal_app.TRAINER_CPU and spec.memory == modal_app.TRAINER_MEMORY_MIB
    assert modal_app.TIMEOUT_S == 24 * 3600
    assert all("==" in p for p in modal_app.PACKAGES[:6])


@pytest.mark.train
def test_remote_body_emits_the_same_events_as_the_local_backend(tiny_model, tmp_path, home):
    published, commits = [], []
    config = api.build_config(model=tiny_model, steps=4, eval_samples=2).to_dict()
    result = remote_train(config, "r1", str(tmp_path), published.extend, lambda: commits.append(1), lambda: False)
    assert result["status"] == "finished"
    stored = [json.loads(line) for line in (tmp_path / "r1" / "events.jsonl").read_text().splitlines()]
    assert published == stored and [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    local = api.finetune(model=tiny_model, steps=4, eval_samples=2, display=False)
    local.wait(timeout=120, progress=False)
    assert [e["type"] for e in stored] == [e.type for e in local.events()]
    assert commits  # the Volume is committed as it goes


def test_remote_failure_is_an_event_and_never_leaks_the_hf_token(tmp_path, monkeypatch, tiny_model):
    token = "hf_" + "x" * 30
    monkeypatch.setenv("HF_TOKEN", token)
    config = api.build_config(model=tiny_model, data=f"/nowhere/{token}.jsonl").to_dict()
    published = []
    result = remote_train(config, "r2", str(tmp_path), published.extend, lambda: None, lambda: False)
    assert result["status"] == "failed" and published[-1]["type"] == "failed"
    assert token not in json.dumps(published) and token not in result["error"]
    assert "[redacted]" in published[-1]["message"]


@pytest.mark.train
def test_launch_streams_events_into_the_local_store_with_cost(modal_client, home, tiny_model, tmp_path,
                                                             capsys):
    modal_client.deployed = False  # first use: deployed on the way, with a visible message
    data = tmp_path / "train.jsonl"
    shutil.copy(sample_files("people")[0], data)
    run = api.finetune(model=tiny_model, data=str(data), backend="modal", gpu="H100", steps=5, eval_samples=2,
                       display=False)
    summary = run.wait(timeout=120, progress=False)
    assert summary.status == "finished", run.events()[-1]
    events = run.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert modal_client.spawned == [(run.id, "H100")]
    assert list((modal_client.volume / "data").glob("*/train.jsonl"))  # the local file was uploaded
    printed = capsys.readouterr().out
    assert modal_client.deployed
    assert "deploying it now" in printed and "to the Modal Volume… done" in printed
    assert json.loads((modal_client.volume / run.id / "config.json").read_text())["train"]["save_every"] == 50
    assert summary.cost_usd is not None and summary.cost_usd > 0
    assert summary.cost_usd == pytest.approx(cost_so_far("H100", summary.ended - summary.started))


class KernelThatDies:
    """The client as seen by a kernel that is about to restart: after `die()` it never hears back."""

    def __init__(self, inner):
        self.inner, self.dead = inner, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def poll_events(self, run_id, timeout_s):
        events = [] if self.dead else self.inner.poll_events(run_id, timeout_s)
        if self.dead:  # including a poll that was in flight when the kernel died: its threads end
            raise SystemExit("this kernel is gone")
        return events


@pytest.mark.train
def test_reattach_replays_the_volume_history_then_follows(modal_client, home, tiny_model, monkeypatch):
    old_kernel = KernelThatDies(modal_client)
    monkeypatch.setattr("nbfinetune.backends._modal_backend", {"instance": ModalBackend(old_kernel)})
    run = api.finetune(model=tiny_model, backend="modal", steps=40, eval_samples=0, display=False)
    wait_for(lambda: any(e.type == "step" for e in run.events()))
    old_kernel.dead = True
    # A kernel restart: a new backend (no mirror thread) and a local copy that lost its tail.
    path = RunStore().events_path(run.id)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    fresh_backend = ModalBackend(modal_client)
    reattached = api.Run(run.id, RunStore(), fresh_backend)
    assert reattached.wait(timeout=120, progress=False).status == "finished"
    events = reattached.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e["step"] for e in events if e.type == "step"] == list(range(1, 41))


@pytest.mark.train
def test_cancel_and_network_loss(modal_client, home, tiny_model):
    # The first polls fail: the mirror must back off and reconnect, keeping the run.
    modal_client.fail_polls = 3
    run = api.finetune(model=tiny_model, backend="modal", steps=100000, eval_samples=0, display=False)
    wait_for(lambda: any(e.type == "step" for e in run.events()), timeout=180)
    run.cancel()
    summary = run.wait(timeout=120, progress=False)
    assert summary.status == "cancelled" and (modal_client.volume / run.id / "adapter").is_dir()


@pytest.mark.train
def test_budget_cap_cancels_the_run(modal_client, home, tiny_model):
    run = api.finetune(model=tiny_model, backend="modal", gpu="B200:8", budget=0.0001, steps=100000,
                       eval_samples=0, display=False)
    summary = run.wait(timeout=180, progress=False)
    assert summary.status == "cancelled" and summary.cost_usd >= 0.0001


def test_setup_errors_say_what_to_do(modal_client, home, tiny_model, monkeypatch, tmp_path):
    modal_client.ready_error = "the nbfinetune app is not deployed to Modal yet: run `nbfinetune deploy`"
    with pytest.raises(ModalSetupError, match="nbfinetune deploy"):
        api.finetune(model=tiny_model, backend="modal", display=False)
    with pytest.raises(ConfigError, match="unknown GPU type 'V100'"):
        api.finetune(model=tiny_model, backend="modal", gpu="V100", display=False)
    from nbfinetune.backends.modal_backend import RealModalClient

    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    import importlib

    import modal.config

    importlib.reload(modal.config)
    with pytest.raises(ModalSetupError, match="modal token new"):
        RealModalClient().check_ready()


def test_gpu_specs_prices_and_estimates():
    assert parse_gpu("a10g") == ("A10", 1) and parse_gpu("H100:4") == ("H100", 4)
    for bad, message in (("V100", "unknown GPU type 'V100'; Modal offers T4"),
                         ("H100:9", "GPU count must be 1 to 8, got 9"),
                         ("H100:x", "GPU count in 'H100:x' must be a number")):
        with pytest.raises(UnknownGPU, match=re.escape(message)):
            parse_gpu(bad)
    assert cost_so_far("H100:2", 100) == pytest.approx(2 * 100 * 0.001097)
    guess = estimate("A10", tokens=1_000_000, parameters=135_000_000)
    assert guess.usd > 0 and "prices of 2026-07-01" in str(guess) and "of peak bf16" in str(guess)


def test_deploy_without_credentials_says_how_to_get_them(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["MODAL_CONFIG_PATH"] = str(tmp_path / "none.toml")
    out = subprocess.run([sys.executable, "-m", "nbfinetune.cli", "deploy"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 2 and "modal token new" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.train
def test_remote_body_with_several_processes_publishes_rank0_events(tiny_model, tmp_path, home):
    """gpu="TYPE:N" runs N data-parallel trainers under torchrun in the container (gloo on CPU here)."""
    published = []
    config = api.build_config(model=tiny_model, steps=3, batch_size=4, processes=2, eval_samples=0).to_dict()
    result = remote_train(config, "rN", str(tmp_path), published.extend, lambda: None, lambda: False)
    assert result["status"] == "finished", (result, published[-1:])
    assert [e["seq"] for e in published] == list(range(1, len(published) + 1))
    assert next(e for e in published if e["type"] == "started")["processes"] == 2


def _app_definition(env):
    """The Trainer's and Chat's secrets, volumes and image env as a process with `env` defines them."""
    import subprocess
    import sys

    code = ("import json, warnings; warnings.simplefilter('ignore'); from nbfinetune.backends import modal_app as m\n"
            "specs = {k: f._spec_ for k, f in m.app.registered_functions.items()}\n"
            "print(json.dumps({k: {'secrets': [repr(s) for s in v.secrets], 'volumes': sorted(v.volumes),\n"
            "  'gpus': str(v.gpus), 'env': m.image._deferred_env if hasattr(m.image, '_deferred_env') else None}\n"
            "  for k, v in specs.items()} | {'hf': m.HF_SECRET}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_the_app_is_defined_the_same_at_deploy_time_and_in_the_container(tmp_path):
    """Item 1f: the HF secret chosen when deploying is part of the image's environment, so a container
    (which has the image's environment and nothing of the deploying kernel's) defines the same app."""
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HOME": str(tmp_path)}
    deploying = _app_definition({**base, "NBFINETUNE_MODAL_HF_SECRET": "huggingface-secret"})
    assert deploying["hf"] == "huggingface-secret" and "huggingface-secret" in deploying["Trainer.*"]["secrets"][0]
    from nbfinetune.backends import modal_app

    image_env = _image_env(modal_app.image, {**base, "NBFINETUNE_MODAL_HF_SECRET": "huggingface-secret"})
    container = _app_definition({**base, **image_env})
    assert container == deploying


def _image_env(image, env):
    """The environment variables the image sets, as evaluated by a deploying process with `env`."""
    import subprocess
    import sys

    code = ("import json, warnings; warnings.simplefilter('ignore'); from nbfinetune.backends import modal_app as m\n"
            "print(json.dumps(getattr(m, 'IMAGE_ENV', {})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_remote_chat_asks_for_the_adapter_or_the_base_model_and_top_p(monkeypatch):
    """Item 1g: the side-by-side base answer on Modal is the base model's, with the chosen sampling."""
    from nbfinetune.backends import modal_chat

    calls = []

    class Generate:
        def remote_gen(self, messages, **kwargs):
            calls.append(kwargs)
            yield "hi"

    chat = object.__new__(modal_chat.RemoteChatModel)
    chat._chat = type("Chat", (), {"generate": Generate()})()
    assert list(chat.stream([{"role": "user", "content": "x"}], top_p=0.5, adapter="base")) == ["hi"]
    assert calls == [{"max_new_tokens": 256, "temperature": 0.0, "top_p": 0.5, "adapter": "base"}]
    import inspect

    from nbfinetune.backends import modal_app

    from modal._utils.async_utils import synchronizer

    generate = synchronizer._translate_in(modal_app.Chat._get_user_cls().generate)
    params = inspect.signature(generate.raw_f).parameters
    assert "adapter" in params and "top_p" in params


def test_credentials_written_after_import_are_read_without_a_restart(tmp_path, monkeypatch):
    """Item 1h: `modal token new` writes ~/.modal.toml after modal was imported."""
    import importlib

    import modal.config

    from nbfinetune.backends.modal_backend import require_credentials

    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    path = tmp_path / "modal.toml"
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(path))
    importlib.reload(modal.config)
    with pytest.raises(ModalSetupError, match="modal token new"):
        require_credentials()
    path.write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\nactive = true\n')
    require_credentials()
    assert modal.config.config.get("token_id") == "ak-1"
    monkeypatch.undo()
    importlib.reload(modal.config)


def test_a_container_without_cuda_fails_clearly_instead_of_training_on_cpu(tmp_path, tiny_model, home):
    """Item 1m: on Modal the body requires a CUDA device."""
    published = []
    config = api.build_config(model=tiny_model, steps=2, eval_samples=0).to_dict()
    result = remote_train(config, "rc", str(tmp_path), published.extend, lambda: None, lambda: False,
                          require_cuda=True)
    assert result["status"] == "failed" and "no CUDA device" in published[-1]["message"]
    assert "rc: starting" in (tmp_path / "rc" / "container.log").read_text()  # the log reaches the Volume

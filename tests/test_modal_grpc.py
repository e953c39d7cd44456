"""The Modal backend through the real, unpatched `modal` library against a fake of Modal's control plane
(tests/modal_fake: gRPC on loopback, blobs over local HTTP); containers run our real container body with
the tiny model in threads. What only real Modal can show is listed in the README."""

import json

import pytest

from nbfinetune import api
from nbfinetune.backends.modal_backend import ModalBackend, RealModalClient

from tests.helpers import wait_for
from tests.modal_fake import containers, fake_modal


@pytest.fixture
def modal_fake(tmp_path, monkeypatch, home):
    monkeypatch.setattr("nbfinetune.backends.remote.CANCEL_CHECK_S", 0.0)
    monkeypatch.setattr("nbfinetune.backends.remote.FLUSH_S", 0.2)
    monkeypatch.setattr("nbfinetune.backends.modal_backend.MIRROR_POLL_S", 0.2)
    monkeypatch.setattr("nbfinetune.backends.modal_backend.STATUS_CACHE_S", 0.0)
    with fake_modal(tmp_path / "modal") as fake:
        containers.install(fake)
        backend = ModalBackend(RealModalClient())
        monkeypatch.setattr("nbfinetune.backends.base._modal_backend", {"instance": backend})
        yield fake


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

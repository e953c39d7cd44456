from __future__ import annotations

from pathlib import Path

import pytest

# jp_fetch, jp_serverapp, ... for the server extension tests (tests/test_server.py).
pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from nbfinetune.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: str):
    from nbfinetune.core.setup import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated NBFINETUNE_HOME for each test."""
    monkeypatch.setenv("NBFINETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


@pytest.fixture(scope="session")
def ip():
    """One real IPython shell for the whole session, with the extension loaded."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython() or get_ipython()  # start_ipython returns None once it has run
    shell.extension_manager.load_extension("nbfinetune")
    return shell


def _fast_modal_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Poll, flush and cancel checks at test speed (seconds in production)."""
    monkeypatch.setattr("nbfinetune.backends.remote.CANCEL_CHECK_S", 0.0)
    monkeypatch.setattr("nbfinetune.backends.remote.FLUSH_S", 0.2)
    monkeypatch.setattr("nbfinetune.backends.modal_backend.MIRROR_POLL_S", 0.2)
    monkeypatch.setattr("nbfinetune.backends.modal_backend.STATUS_CACHE_S", 0.0)


@pytest.fixture
def modal_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """backend="modal" runs against a fake of our thin ModalClient interface (tests/modal_fake/client.py):
    its containers run the real remote body in threads, its Volume is a folder."""
    from nbfinetune.backends.modal_backend import ModalBackend
    from tests.modal_fake.client import FakeModalClient

    _fast_modal_timings(monkeypatch)
    client = FakeModalClient(tmp_path / "volume")
    monkeypatch.setattr("nbfinetune.backends._modal_backend", {"instance": ModalBackend(client)})
    return client


@pytest.fixture
def modal_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path):
    """backend="modal" runs through the real, unpatched `modal` library against a fake of Modal's control
    plane (tests/modal_fake: gRPC on loopback, blobs over local HTTP)."""
    from nbfinetune.backends.modal_backend import ModalBackend, RealModalClient
    from tests.modal_fake import containers, fake_modal

    _fast_modal_timings(monkeypatch)
    with fake_modal(tmp_path / "modal") as fake:
        containers.install(fake)
        monkeypatch.setattr("nbfinetune.backends._modal_backend",
                            {"instance": ModalBackend(RealModalClient())})
        yield fake

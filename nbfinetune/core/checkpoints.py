"""Checkpoints: the adapter in standard peft format plus optimizer, scheduler, data position and RNG state.

Every directory is written whole or not at all: files go into a temporary sibling directory, are fsync'd,
and the directory is renamed into place. A kill or a full disk mid-save leaves only a `.tmp-*` directory,
which no resume looks at. Older (non-atomic) checkpoints are checked before they are used: resume takes
the newest one that loads and reports each broken one it skips.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .batching import DataPosition

STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "history.json"
ADAPTER_FILE = "adapter_model.safetensors"
# Which training step an adapter directory holds: lets a cancel keep a better adapter
# (see trainer.Recipe.cancel).
ADAPTER_META = "nbfinetune.json"


class NoSpaceLeft(OSError):
    """The disk filled while saving: says so, and where, instead of a serializer's internal error."""


def save_adapter(model: Any, tokenizer: Any, directory: Path, step: int | None = None) -> Path:
    """Standard peft layout (adapter_config.json + adapter_model.safetensors) plus the tokenizer,
    so chat and export use exactly the template the adapter was trained with. Replaced atomically."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if step is not None:
            (tmp / ADAPTER_META).write_text(json.dumps({"step": step}), encoding="utf-8")

    return _write_atomically(directory, write)


def adapter_step(directory: Path) -> int | None:
    """The training step a saved adapter holds; None when unknown (no adapter, or saved by an older
    version)."""
    try:
        return int(json.loads((directory / ADAPTER_META).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_checkpoint(directory: Path, model: Any, tokenizer: Any, optimizer: Any, scheduler: Any, step: int,
                    position: DataPosition, history: dict[str, Any]) -> Path:
    import torch

    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
             "position": asdict(position), "rng": _rng_state()}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ADAPTER_META).write_text(json.dumps({"step": step}), encoding="utf-8")
        (tmp / HISTORY_FILE).write_text(json.dumps(history), encoding="utf-8")
        torch.save(state, tmp / STATE_FILE)

    return _write_atomically(directory, write)


def _write_atomically(directory: Path, write: Callable[[Path], None]) -> Path:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync(path)
        _fsync(tmp)
        old = directory.parent / f".old-{directory.name}-{os.getpid()}"
        if directory.exists():  # rename cannot replace a non-empty directory: move the old one aside first
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
        tmp.rename(directory)
        _fsync(directory.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(exc, directory):
            raise NoSpaceLeft(errno.ENOSPC, f"no space left on device while saving {directory} "
                              f"({_free_mb(directory.parent)} MB free there); free some space, then resume "
                              "the run from its last complete checkpoint") from exc
        raise
    return directory


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(exc: BaseException, directory: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left on device" in text:
        return True
    # torch.save reports a short write as "[enforce fail at inline_container.cc] . unexpected pos N vs M";
    # with little room left on the disk that is what it is.
    return isinstance(exc, RuntimeError) and "unexpected pos" in text


def _free_mb(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free // 2**20
    except OSError:
        return 0


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Any) -> None:
    import torch

    if not isinstance(state, dict):  # checkpoints of earlier versions kept only the CPU generator
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished-looking checkpoint directories, newest first (temporary ones are never listed)."""
    found = [p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files are all present and non-empty (cheap; `resume_point` also loads)."""
    return next((p for p in checkpoint_dirs(run_dir) if _missing(p) is None), None)


def _missing(directory: Path) -> str | None:
    for name in (STATE_FILE, HISTORY_FILE, ADAPTER_FILE):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size == 0:
            return f"{name} is empty"
    return None


def load_adapter_weights(model: Any, directory: Path) -> None:
    """Put a saved adapter's weights back into the training model (same LoRA config)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_FILE)))


@dataclass
class CheckpointData:
    """A checkpoint read completely into memory, before anything of it is applied."""

    path: Path
    state: dict[str, Any]
    history: dict[str, Any]
    weights: dict[str, Any]


@dataclass
class ResumePoint:
    step: int
    position: DataPosition
    history: dict[str, Any]
    path: Path | None
    # (checkpoint directory, why it was not used): newer checkpoints that were broken.
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def read_checkpoint(directory: Path) -> CheckpointData:
    """Read every file of a checkpoint; raises ValueError naming the broken file."""
    import torch
    from safetensors.torch import load_file

    reason = _missing(directory)
    if reason is not None:
        raise ValueError(reason)
    try:
        state = torch.load(directory / STATE_FILE, weights_only=False)
        needed = {"optimizer", "scheduler", "step", "position", "rng"}
        if not isinstance(state, dict) or not needed <= set(state):
            raise ValueError("incomplete contents")
    except Exception as exc:  # noqa: BLE001 — any failure to unpickle means the file is damaged
        raise ValueError(f"{STATE_FILE} is unreadable ({type(exc).__name__}: {exc})") from None
    try:
        history = json.loads((directory / HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{HISTORY_FILE} is unreadable ({exc})") from None
    try:
        weights = load_file(str(directory / ADAPTER_FILE))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{ADAPTER_FILE} is unreadable ({type(exc).__name__}: {exc})") from None
    return CheckpointData(directory, state, history if isinstance(history, dict) else {}, weights)


def apply_checkpoint(loaded: CheckpointData, model: Any, optimizer: Any, scheduler: Any
                     ) -> tuple[int, DataPosition]:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, loaded.weights)
    optimizer.load_state_dict(loaded.state["optimizer"])
    scheduler.load_state_dict(loaded.state["scheduler"])
    _set_rng_state(loaded.state["rng"])
    return int(loaded.state["step"]), DataPosition(**loaded.state["position"])


def load_checkpoint(directory: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, DataPosition]:
    return apply_checkpoint(read_checkpoint(directory), model, optimizer, scheduler)


def resume_point(run_dir: Path, model: Any, optimizer: Any, scheduler: Any) -> ResumePoint:
    """Restore the newest complete checkpoint into model/optimizer/scheduler; step 0 when there is none."""
    skipped: list[tuple[Path, str]] = []
    for directory in checkpoint_dirs(run_dir):
        try:
            loaded = read_checkpoint(directory)
        except ValueError as exc:
            skipped.append((directory, str(exc)))
            continue
        step, position = apply_checkpoint(loaded, model, optimizer, scheduler)
        return ResumePoint(step, position, loaded.history, directory, skipped)
    return ResumePoint(0, DataPosition(), {}, None, skipped)

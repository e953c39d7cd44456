"""Shared helpers for the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from nbfinetune.config import RunConfig


def tiny_config(model: str, **train) -> RunConfig:
    settings = {"max_steps": 12, "lr": 5e-3, "batch_size": 8} | train
    return RunConfig.from_dict({"model": model, "train": settings, "eval": {"samples": 4, "max_new_tokens": 12}})


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_row(question: str = "hi", answer: str = "hello") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def starts_like_reference(prediction: str, reference: str) -> float:
    """A user metric, referred to as 'tests.helpers:starts_like_reference'."""
    return float(prediction[:1] == reference[:1])


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def live_worker(run_dir: Path):
    """A process that owns the run the way a real worker does: it holds the run's writer lock."""
    import os
    import subprocess
    import sys

    from nbfinetune.ownership import take_lock

    lock = take_lock(run_dir)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(lock,))
    os.close(lock)
    return worker


def execute_notebook(notebook, folder: Path, env: dict[str, str], timeout: int, **client_options) -> None:
    """Execute `notebook` in place with nbclient, its kernel started in `folder` with `env` added to this
    process's environment (the kernel inherits it); the environment is restored afterwards."""
    import os

    from nbclient import NotebookClient

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(folder)}}, **client_options).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

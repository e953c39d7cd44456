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


def synthetic_run(store, config: RunConfig | None = None, *, steps: int = 3, evals: tuple[int, ...] = (),
                  metrics: dict[str, float] | None = None, base_metrics: dict[str, float] | None = None,
                  end: str = "finished", error: tuple[str, str] = ("DataError", "no usable rows")) -> str:
    """A run stored the way a worker writes one, without training a model: `started`, a falling loss per
    step, evaluations at the steps in `evals` (0: the base model's), then `end` (finished, failed or
    cancelled). For tests of what listings, comparisons and views show; the trainer itself is tested by
    the tests marked `train`.

    A failed run with steps=0 failed before training (bad data, say): only its `failed` event is written.
    Only the public store API is used: RunStore.create and EventWriter."""
    from nbfinetune.runs import EventWriter

    config = config or RunConfig()
    metrics = {"json_match": 0.5} if metrics is None else metrics
    base_metrics = {name: 0.0 for name in metrics} if base_metrics is None else base_metrics
    run_id = store.create(config)
    writer = EventWriter(store.events_path(run_id), run_id)
    losses = [3.0 / step for step in range(1, steps + 1)]
    last_eval: dict = {}
    try:
        if steps or end != "failed":
            writer.emit("started", model=config.model, device="cpu", total_steps=steps)
        for step in range(0, steps + 1):
            if step:
                writer.emit("step", step=step, epoch=step / steps, loss=losses[step - 1], lr=1e-3,
                            tokens_per_s=100.0)
            if step in evals:  # step 0: the base model's evaluation, before training
                last_eval = {"step": step, "eval_loss": 3.3 / max(step, 1),
                             "metrics": base_metrics if step == 0 else metrics, "base_metrics": base_metrics}
                writer.emit("eval", **last_eval)
        if end == "finished":
            summary = {"first_loss": (losses or [None])[0], "last_loss": (losses or [None])[-1],
                       "eval_loss": last_eval.get("eval_loss"), "metrics": last_eval.get("metrics", {}),
                       "base_metrics": last_eval.get("base_metrics", {}), "steps": steps}
            writer.emit("finished", adapter_path=str(store.path(run_id) / "adapter"), summary=summary)
        elif end == "failed":
            writer.emit("failed", error=error[0], message=error[1])
        elif end == "cancelled":
            writer.emit("cancelled", step=steps, adapter_path=None)
        else:
            raise ValueError(f"end: finished, failed or cancelled, not {end!r}")
    finally:
        writer.close()
    return run_id

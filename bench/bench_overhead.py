"""UI and launch costs, measured side by side in one process.

a) Event stream + live dashboard overhead: the same training run (same seed and steps) with a no-op
   emit and no subscriber, then with the fsync'd EventWriter and a live Dashboard following the file.
   Reports the wall-clock ratio and the directly measured time spent inside emit(). Runs alternate
   (bare, ui, ui, bare, …) and the ratio is of medians: single pairs swing ±10% on a shared 2-core box.
b) Launch to first step: `nbfinetune.finetune()` through the local backend (subprocess), timing when
   the `started`, first `eval` (base model scored) and first `step` events appear.

    python bench/bench_overhead.py [--model ID] [--steps 12] [--repeats 3]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from nbfinetune.config import DEFAULT_MODEL, RunConfig
from nbfinetune.core.trainer import train
from nbfinetune.runs import EventWriter, RunStore


def config_for(model: str, steps: int, eval_samples: int) -> RunConfig:
    return RunConfig.from_dict({"model": model, "train": {"max_steps": steps},
                                "eval": {"samples": eval_samples, "generate": eval_samples > 0}})


def timed_train(config: RunConfig, with_ui: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        run_id = store.create(config)
        writer = EventWriter(store.events_path(run_id), run_id)
        emit_seconds = 0.0
        step_times: list[float] = []

        def emit(type: str, **payload) -> None:
            nonlocal emit_seconds
            if type == "step":
                step_times.append(time.perf_counter())
            if with_ui:
                start = time.perf_counter()
                writer.emit(type, **payload)
                emit_seconds += time.perf_counter() - start

        dashboard = None
        if with_ui:
            from nbfinetune.api import Run

            class Alive:
                def is_alive(self, *_args):
                    return True

            dashboard = Run(run_id, store, backend=Alive()).dashboard()  # follows the file in its thread
        train(config, emit, lambda: False, Path(tmp) / run_id)
        if dashboard is not None:
            dashboard._thread.join(10)
            drawn = len(dashboard.figure.data[0].x)
            dashboard.close()
        writer.close()
    train_s = step_times[-1] - step_times[0]
    result = {"train_s": train_s, "emit_s": emit_seconds}
    if with_ui:
        result["dashboard_points"] = drawn
    return result


def launch_latency(model: str) -> dict:
    import nbfinetune as nbft

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NBFINETUNE_HOME"] = tmp
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        start = time.perf_counter()
        run = nbft.finetune(model=model, steps=2, eval_samples=24, display=False)
        marks: dict[str, float] = {}
        for event in run.follow():
            key = "first_step" if event.type == "step" else event.type
            marks.setdefault(key, time.perf_counter() - start)
            if event.type == "step":
                run.cancel()
        run.wait(timeout=120, progress=False)
    return {k: round(v, 2) for k, v in marks.items() if k in ("started", "eval", "first_step")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="runs with and without the UI, alternated")
    args = parser.parse_args()
    from nbfinetune.core.models import resolve_model

    model = resolve_model(args.model)  # convert/download outside the timings
    config = config_for(model, args.steps, eval_samples=0)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for i in range(args.repeats):
        for with_ui in ((False, True) if i % 2 == 0 else (True, False)):
            result = timed_train(config, with_ui=with_ui)
            runs[with_ui].append(result)
            label = "events + live dashboard:" if with_ui else "no events, no dashboard:"
            print(label, json.dumps(result), flush=True)
    bare_s = statistics.median(r["train_s"] for r in runs[False])
    ui_s = statistics.median(r["train_s"] for r in runs[True])
    emit_share = sum(r["emit_s"] for r in runs[True]) / sum(r["train_s"] for r in runs[True])
    launch = launch_latency(model)
    print("launch to first step (s):", json.dumps(launch), flush=True)
    print(json.dumps({
        "model": args.model, "steps": args.steps, "repeats": args.repeats,
        "ui_overhead_wall": round(ui_s / bare_s - 1, 4),
        "train_s": {"bare": [round(r["train_s"], 2) for r in runs[False]],
                    "ui": [round(r["train_s"], 2) for r in runs[True]]},
        "emit_share_of_train_time": round(emit_share, 5),
        "launch_to_started_s": launch.get("started"), "launch_to_base_eval_s": launch.get("eval"),
        "launch_to_first_step_s": launch.get("first_step"),
    }))


if __name__ == "__main__":
    main()

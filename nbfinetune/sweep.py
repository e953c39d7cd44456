"""Sweeps: a grid (or random sample of it) of settings, launched as ordinary runs.

How many train at once is the backend's `max_concurrent_runs`: on Modal every run is spawned at once
(Modal's fan-out runs them in parallel, capped by the workspace's GPU limit); locally they run one after
another in a background thread, since they would only fight over the same cores. All curves are overlaid
live in one figure; results are a DataFrame; the best run is picked by an eval metric.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import deque
from typing import Any, cast

from .api import Run
from .backends import get_backend
from .config import RunConfig
from .runs import LIVE, LiveState, RunState, RunStore
from .settings import build_config

REDRAW_INTERVAL_S = 0.2


def grid_points(grid: dict[str, list[Any]], samples: int | None = None,
                seed: int = 0) -> list[dict[str, Any]]:
    """Every combination of the grid's values, or `samples` of them drawn without replacement."""
    if not grid or any(not isinstance(v, (list, tuple)) or not v for v in grid.values()):
        raise ValueError("grid must map setting names to non-empty lists, e.g. "
                         "{'lr': [1e-4, 3e-4], 'r': [8, 16]}")
    keys = list(grid)
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    if samples is not None and samples < len(points):
        points = random.Random(seed).sample(points, samples)
    return points


def sweep(grid: dict[str, list[Any]], metric: str = "eval_loss", samples: int | None = None,
          **settings: Any) -> Sweep:
    """Launch one run per combination of `grid` (or `samples` random ones) and return the Sweep: live
    overlay (display it), `.wait()`, `.results()` DataFrame, `.best()` run by `metric`.

    sweep({"lr": [1e-4, 3e-4], "r": [8, 16]}, data="train.jsonl", steps=200, backend="modal", gpu="A10")
    """
    return Sweep(grid, metric=metric, samples=samples, **settings)


class Sweep:
    def __init__(self, grid: dict[str, list[Any]], metric: str = "eval_loss", samples: int | None = None,
                 store: RunStore | None = None, **settings: Any) -> None:
        self.store = store or RunStore()
        self.metric = metric
        self.points = grid_points(grid, samples)
        self.configs: list[RunConfig] = [build_config(**(settings | point)) for point in self.points]
        from .launch_checks import check_before_launch

        for config in self.configs:  # a bad path or format is refused before the first run, not in each
            check_before_launch(config)
        backends = {c.backend for c in self.configs}
        if len(backends) != 1:
            raise ValueError("all runs of a sweep use one backend")
        self.backend = get_backend(backends.pop())
        self.runs: list[Run] = []
        self._done = threading.Event()
        self._figure: Any = None
        self._states: dict[str, LiveState] = {}  # per run: its events folded as they come, curves included
        limit = self.backend.max_concurrent_runs
        if limit is None:  # the backend fans out (Modal): every run starts now
            for config in self.configs:
                self.runs.append(Run(self.backend.launch(config, self.store), self.store, self.backend))
            self._done.set()
        else:
            self._launcher = threading.Thread(target=self._launch_in_turn, args=(limit,), daemon=True,
                                              name="nbfinetune-sweep")
            self._launcher.start()
            while len(self.runs) < 1 and self._launcher.is_alive():
                time.sleep(0.05)

    def _launch_in_turn(self, limit: int) -> None:
        """At most `limit` runs at once: the next starts when the oldest still training ends."""
        training: deque[Run] = deque()
        for config in self.configs:
            if len(training) >= limit:
                training.popleft().wait(progress=False)
            run = Run(self.backend.launch(config, self.store), self.store, self.backend)
            self.runs.append(run)
            training.append(run)
        for run in training:
            run.wait(progress=False)
        self._done.set()

    # --- results ---------------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._done.wait(timeout)
        for run in list(self.runs):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            run.wait(timeout=left, progress=False)
        return self.results()

    def results(self) -> Any:
        """One row per run: the swept settings, status, losses and metrics."""
        from .widgets.compare import comparison_table

        table = comparison_table(self.runs)
        for key in self.points[0]:
            table[f"swept {key}"] = [point[key] for point in self.points[: len(table)]]
        return table

    def best(self) -> Run | None:
        """The finished run with the best metric: lowest for losses, highest for scores."""
        table = self.results()
        table = table[table["status"] == "finished"]
        if self.metric not in table or table[self.metric].isna().all():
            return None
        lower_is_better = "loss" in self.metric
        run_id = table[self.metric].idxmin() if lower_is_better else table[self.metric].idxmax()
        return next(run for run in self.runs if run.id == run_id)

    # --- live overlay ----------------------------------------------------------------------------
    def figure(self) -> Any:
        """A live FigureWidget: each run's smoothed train loss (solid) and eval loss (dotted)."""
        import plotly.graph_objects as go

        if self._figure is None:
            self._figure = go.FigureWidget(layout={"height": 420, "template": "plotly_white",
                                                   "xaxis_title": "step", "yaxis_title": "loss",
                                                   "title": f"sweep over {', '.join(self.points[0])}"})
            self._redraw()
            threading.Thread(target=self._follow, daemon=True, name="nbfinetune-sweep-view").start()
        return self._figure

    def _redraw(self) -> list[RunState]:
        """Fold what each run appended since the last redraw (each file is read incrementally) and
        redraw the runs that changed; returns every run's state."""
        from .run_state import Curves
        from .widgets.compare import draw_run

        states = []
        with self._figure.batch_update():
            for index, (run, point) in enumerate(zip(list(self.runs), self.points, strict=False)):
                live = self._states.get(run.id)
                first = live is None
                if live is None:
                    live = self._states[run.id] = LiveState(self.store.events_path(run.id),
                                                            lambda: RunState(curves=Curves()))
                if live.update() or first:
                    label = ", ".join(f"{k}={v}" for k, v in point.items())
                    draw_run(self._figure, index, cast(Curves, live.state.curves), label)
                states.append(live.state)
        return states

    def _follow(self) -> None:
        while True:
            runs, states = list(self.runs), self._redraw()
            if self._done.is_set() and len(states) == len(runs) and all(
                    state.status_given(self.store.worker_alive(run.id)) not in LIVE
                    for run, state in zip(runs, states, strict=True)):
                self._redraw()
                return
            time.sleep(REDRAW_INTERVAL_S)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.figure())

"""Live dashboard: a view over a run's event stream, redrawn at most a few times per second.

A background thread tails the run's events, folds them into a RunState (with the chart's Curves fed from
the same apply loop) and redraws in one
`batch_update()` — so a 100k-step run costs the same number of widget messages per second as a short
one, and replaying a finished run draws it at once.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any, cast

import ipywidgets as widgets

from ..run_state import Curves, describe_judge_usage
from ..runs import ENDED, LiveState, RunState
from .charts import apply_curves, empty_figure

REDRAW_INTERVAL_S = 0.2
LIVE_POINTS = 2000  # per curve in the live chart: a 100k-step run redraws as cheaply as a short one


_BADGE = {"pending": "#6c757d", "running": "#0d6efd", "finished": "#198754", "failed": "#dc3545",
          "cancelled": "#fd7e14", "lost": "#dc3545"}


class Dashboard(widgets.VBox):
    """The live view. Its chart is an Output widget holding the figure as plotly JSON plus an SVG copy: the
    widget's state *is* the drawing, so a reloaded page (kernel alive) gets it back whole, a saved
    notebook stays small (no 5 MB plotly bundle per chart) and viewers without plotly draw the SVG."""

    def __init__(self, run: Any, start: bool = True) -> None:
        self.run = run
        config = run.store.config(run.id)
        self.label = config.get("name") or run.id
        self.gpu = config.get("gpu")
        rate = run.store.rate(run.id)
        self._live = LiveState(run.store.events_path(run.id),
                               lambda: RunState.of_run(run.id, config, rate, curves=Curves()))
        self._drawn: tuple | None = None
        self._closed = threading.Event()
        self.figure = empty_figure()
        self.chart = widgets.Output(layout=widgets.Layout(min_height="420px"))
        self.status_html = widgets.HTML()
        self.progress = widgets.IntProgress(value=0, min=0, max=1,
                                            layout=widgets.Layout(width="220px", min_width="160px"))
        self.stats_html = widgets.HTML()
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", button_style="warning",
                                            tooltip="Stop gracefully: the adapter and a checkpoint are saved")
        self.cancel_button.on_click(lambda _button: self._cancel())
        self.metrics_html = widgets.HTML()
        self.samples_html = widgets.HTML()
        header = widgets.HBox([self.status_html, self.progress, self.stats_html, self.cancel_button],
                              layout=widgets.Layout(align_items="center", gap="12px", flex_flow="row wrap"))
        super().__init__([header, self.chart, self.metrics_html, self.samples_html])
        self.add_class("nbfinetune-dashboard")
        self._display_handle: Any = None
        self.poll()
        self.redraw()
        self._thread = threading.Thread(target=self._follow, name=f"nbfinetune-dashboard-{run.id}",
                                        daemon=True)
        if start and self.view.status not in ENDED:
            self._thread.start()

    # --- event intake ----------------------------------------------------------------------------
    @property
    def view(self) -> RunState:
        """Everything the dashboard shows (its chart's curves in `view.curves`)."""
        return self._live.state

    @property
    def curves(self) -> Curves:
        return cast(Curves, self.view.curves)

    def poll(self) -> bool:
        """Fold every complete event written since the last poll; True when something changed."""
        return bool(self._live.update())

    def _follow(self) -> None:
        while not self._closed.is_set():
            changed = self.poll()
            if changed:
                self.redraw()
            if self.view.status in ENDED:
                self.refresh_static()
                return
            if not changed and self.run.backend.is_alive(self.run.id, self.run.store) is False:
                self.poll()  # the worker may have written its final line just before exiting
                self.view.mark_worker_gone()
                self.redraw()
                return
            time.sleep(REDRAW_INTERVAL_S)

    def close(self) -> None:
        self._closed.set()
        super().close()

    # --- display: the live widget, plus a static copy for places without a kernel ---------------
    def _ipython_display_(self) -> None:
        from IPython.display import display

        self._display_handle = display(self.mimebundle(), raw=True, display_id=True)

    def mimebundle(self) -> dict[str, Any]:
        """The widget view for live frontends, and an HTML snapshot that viewers without a kernel show
        (nbviewer, GitHub, a notebook reopened later) — widgets alone vanish there."""
        from .charts import curves_svg, svg_html

        bundle = {"application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                               "model_id": self.model_id},
                  "text/plain": f"<nbfinetune dashboard: run {self.run.id}, {self.view.status}>"}
        static = f"<div>{self.status_html.value}<br>{self.stats_html.value}</div>"
        if self._has_curves():
            static += svg_html(curves_svg(self.curves))
        bundle["text/html"] = static + self.metrics_html.value + self.samples_html.value
        return bundle

    def refresh_static(self) -> None:
        """Replace the static snapshot in the saved output with the current state (e.g. when the run ends)."""
        if self._display_handle is not None:
            self._display_handle.update(self.mimebundle(), raw=True)

    def _cancel(self) -> None:
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        self.run.cancel()

    # --- drawing ---------------------------------------------------------------------------------
    def _has_curves(self) -> bool:
        return bool(self.curves.steps or self.curves.eval_steps)

    def redraw(self) -> None:
        view = self.view
        self._draw_chart()
        color = _BADGE.get(view.status, "#6c757d")
        self.status_html.value = (
            f"<b>{html.escape(self.label)}</b> <span style='background:{color};color:white;"
            f"border-radius:4px;padding:1px 6px'>{html.escape(view.status)}</span> "
            f"<span style='color:#555'>{html.escape(view.message)}</span>")
        self.progress.max = max(1, view.total_steps or 1)
        self.progress.value = min(view.step, self.progress.max)
        self.stats_html.value = _stats(view, self.curves, self.gpu)
        done = view.status in (*ENDED, "lost")
        self.cancel_button.layout.display = "none" if done else None
        self.metrics_html.value = _metrics_table(view)
        self.samples_html.value = _samples_table(view.samples)


    def _draw_chart(self) -> None:
        """One state message per change: the whole chart (thinned), never a growing series of deltas."""
        from .charts import StaticChart, curves_svg

        curves = self.curves
        ended = self.view.status in (*ENDED, "lost")
        drawn = (len(curves.steps), len(curves.eval_steps), curves.best_step, curves.steps[-1:], ended)
        if drawn == self._drawn:
            return
        self._drawn = drawn
        # A run that ended without a step (it failed while loading): no empty 420 px axes. While a run
        # starts, the empty chart is drawn at once, so the browser has its renderer ready for the first step.
        if ended and not self._has_curves():
            self.chart.layout.display = "none"
            return
        self.chart.layout.display = None
        shown = curves.thinned(LIVE_POINTS)
        self.figure = empty_figure()
        apply_curves(self.figure, shown)
        bundle = StaticChart(self.figure, curves_svg(shown))._repr_mimebundle_()
        bundle.pop("image/svg+xml")
        self.chart.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


def _stats(view: RunState, curves: Curves, gpu: str | None) -> str:
    parts = [f"step {view.step}/{view.total_steps or '?'}"]
    if view.tokens_per_s:
        parts.append(f"{view.tokens_per_s:,.0f} tok/s")
    if view.eta_s is not None and view.status == "running":
        parts.append(f"ETA {_duration(view.eta_s)}")
    if curves.loss:
        parts.append(f"loss {curves.loss[-1]:.4f}")
    cost = view.cost_usd()
    if cost is not None:
        parts.append(f"${cost:,.4f} on {html.escape(gpu or '')}")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _metrics_table(view: RunState) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{view.base_metrics.get(name, float('nan')):.3f}</td>"
        f"<td><b>{value:.3f}</b></td></tr>" for name, value in view.metrics.items())
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in view.warnings[-5:])
    out = f"<div>adapter: <code>{html.escape(view.adapter_path)}</code></div>" if view.adapter_path else ""
    if rows:
        out += ("<table class='nbft-metrics'><thead><tr><th>metric</th><th>base model</th><th>fine-tuned</th>"
                f"</tr></thead><tbody>{rows}</tbody></table>")
    if view.judge:  # what the LLM judge has cost so far, beside the scores it gave
        spent = html.escape(describe_judge_usage(view.judge))
        out += f"<div class='nbft-judge' style='color:#555'>{spent}</div>"
    if warnings:
        out += f"<details><summary>{len(view.warnings)} warning(s)</summary><ul>{warnings}</ul></details>"
    return out


def _samples_table(samples: list[dict[str, str]]) -> str:
    if not samples:
        return ""
    keys = ("prompt", "reference", "base", "current", "score", "shown")
    rows = "".join(
        "<tr" + (" style='background:#fff3f3'" if s.get("shown") == "lowest score" else "") + ">"
        + "".join(f"<td style='max-width:320px;white-space:pre-wrap;text-align:left'>"
                  f"{html.escape(str(s.get(k, '')))}</td>" for k in keys)
        + "</tr>" for s in samples[:5])
    return ("<details><summary>sample generations (the same first prompts each time, then the lowest-scoring)"
            "</summary><table><thead><tr><th>prompt</th><th>reference</th><th>base</th><th>fine-tuned</th>"
            f"<th>score</th><th>shown</th></tr></thead><tbody>{rows}</tbody></table></details>")

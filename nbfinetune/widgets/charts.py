"""Curves from events: the series every chart of a run is drawn from, and the figure layout."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..events import Event, FinishedSummary

SMOOTHING = 0.8  # exponential moving average weight, like TensorBoard's default slider
# Method figures drawn beside the loss when a run reports them (DPO, GRPO): event field -> trace name.
EXTRA_SERIES = {"reward_margin": "reward margin", "reward_accuracy": "reward accuracy",
                "eval_reward_margin": "eval reward margin", "eval_reward_accuracy": "eval reward accuracy",
                "reward": "reward (mean)", "kl": "KL to base"}


@dataclass
class Curves:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    best_step: int | None = None  # early stopping: the evaluation whose adapter the run kept
    # field -> (steps, values), for the EXTRA_SERIES a run reports
    extra: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    def add(self, event: Event) -> bool:
        """Fold one event in; True when a curve changed."""
        if event.type == "step":
            if self.steps and event["step"] <= self.steps[-1]:
                self._truncate(event["step"])  # a resumed run re-reports steps: keep the newest
            self.steps.append(event["step"])
            self.loss.append(event["loss"])
            previous = self.smoothed[-1] if self.smoothed else event["loss"]
            self.smoothed.append(SMOOTHING * previous + (1 - SMOOTHING) * event["loss"])
            self.lr.append(event["lr"])
            self._add_extra(event)
            return True
        if event.type == "eval":
            changed = self._add_extra(event)
            if event.get("eval_loss") is not None:
                self.eval_steps.append(event["step"])
                self.eval_loss.append(event["eval_loss"])
                changed = True
            if changed:
                return True
        if event.type == "finished":
            best_step = FinishedSummary.from_dict(event.get("summary")).best_step
            if best_step is not None:
                self.best_step = best_step
                return True
        return False

    def thinned(self, points: int) -> Curves:
        """At most `points` train points (evenly strided, the last kept); evaluations all kept."""
        if len(self.steps) <= points:
            return self
        stride = len(self.steps) / points
        keep = sorted({int(i * stride) for i in range(points)} | {len(self.steps) - 1})
        return Curves([self.steps[i] for i in keep], [self.loss[i] for i in keep],
                      [self.smoothed[i] for i in keep], [self.lr[i] for i in keep], self.eval_steps,
                      self.eval_loss, self.best_step, self.extra)

    def _add_extra(self, event: Event) -> bool:
        found = False
        for name in EXTRA_SERIES:
            value = event.get(name)
            if isinstance(value, (int, float)):
                steps, values = self.extra.setdefault(name, ([], []))
                steps.append(event["step"])
                values.append(float(value))
                found = True
        return found

    def _truncate(self, step: int) -> None:
        keep = sum(1 for s in self.steps if s < step)
        for series in (self.steps, self.loss, self.smoothed, self.lr):
            del series[keep:]
        for steps, values in self.extra.values():
            kept = sum(1 for s in steps if s < step)
            del steps[kept:], values[kept:]

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> Curves:
        curves = cls()
        for event in events:
            curves.add(event)
        return curves


def empty_figure(title: str = "") -> Any:
    """Two rows sharing the step axis: losses on top, learning rate below."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.06)
    fig.add_trace(go.Scatter(name="train loss", mode="lines", line={"color": "rgba(31,119,180,0.3)"}), 1, 1)
    fig.add_trace(go.Scatter(name="train loss (smoothed)", mode="lines",
                             line={"color": "#1f77b4", "width": 2}), 1, 1)
    fig.add_trace(go.Scatter(name="eval loss", mode="lines+markers", line={"color": "#d62728"}), 1, 1)
    fig.add_trace(go.Scatter(name="learning rate", mode="lines", line={"color": "#7f7f7f"}), 2, 1)
    fig.update_layout(title=title or None, height=420,
                      margin={"l": 50, "r": 20, "t": 40 if title else 20, "b": 40},
                      legend={"orientation": "h", "y": 1.08}, template="plotly_white")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="lr", row=2, col=1, exponentformat="e")
    fig.update_xaxes(title_text="step", row=2, col=1)
    return fig


def apply_curves(fig: Any, curves: Curves) -> None:
    raw, smooth, evaluation, lr = fig.data[:4]
    raw.x, raw.y = curves.steps, curves.loss
    smooth.x, smooth.y = curves.steps, curves.smoothed
    evaluation.x, evaluation.y = curves.eval_steps, curves.eval_loss
    if curves.best_step is not None:  # a star on the kept evaluation
        kept = [s == curves.best_step for s in curves.eval_steps]
        evaluation.marker = {"size": [14 if k else 6 for k in kept],
                             "symbol": ["star" if k else "circle" for k in kept]}
    lr.x, lr.y = curves.steps, curves.lr
    traces = {trace.name: trace for trace in fig.data[4:]}
    for name, (steps, values) in curves.extra.items():
        label = EXTRA_SERIES[name]
        if label not in traces:
            import plotly.graph_objects as go

            mode = "lines+markers" if name.startswith("eval_") else "lines"
            fig.add_trace(go.Scatter(name=label, mode=mode), 1, 1)
            traces[label] = fig.data[-1]
        traces[label].x, traces[label].y = steps, values


def curves_figure(events: Iterable[Event], title: str = "") -> Any:
    fig = empty_figure(title)
    apply_curves(fig, Curves.from_events(events))
    return fig


def curves_svg(curves: Curves, title: str = "") -> str:
    """The loss chart as inline SVG: what a saved notebook shows without JavaScript or network."""
    from .svg import Series, line_chart

    return line_chart([Series("train loss", curves.steps, curves.loss, color="rgba(31,119,180,0.35)",
                              width=1),
                       Series("smoothed", curves.steps, curves.smoothed, color="#1f77b4", width=2),
                       Series("eval loss", curves.eval_steps, curves.eval_loss, color="#d62728",
                              markers=True)],
                      title=title)


def svg_html(svg: str) -> str:
    """SVG as an <img> data URI: notebook sanitizers (JupyterLab on an untrusted notebook, nbviewer) drop
    inline <svg> tags but keep images, and no script or network is needed to draw it."""
    import base64

    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f"<img class='nbft-static-chart' alt='chart' src='data:image/svg+xml;base64,{data}'/>"


class StaticChart:
    """A figure as plotly JSON (JupyterLab and VS Code draw it, interactive) plus the same chart as SVG —
    in text/html and image/svg+xml — for every place without a plotly renderer or without trust
    (a reopened notebook, nbviewer, an HTML export offline). No CDN, no JavaScript."""

    def __init__(self, figure: Any, svg: str) -> None:
        self.figure = figure
        self.svg = svg

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"application/vnd.plotly.v1+json": self.figure.to_plotly_json(),
                "text/html": svg_html(self.svg),
                "image/svg+xml": self.svg,
                "text/plain": f"<chart: {len(self.figure.data)} traces>"}


def curves_chart(events: Iterable[Event], title: str = "") -> StaticChart:
    curves = Curves.from_events(events)
    fig = empty_figure(title)
    apply_curves(fig, curves)
    return StaticChart(fig, curves_svg(curves, title))

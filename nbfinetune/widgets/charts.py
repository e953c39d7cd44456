"""Curves from events: the series every chart of a run is drawn from, and the figure layout."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..events import Event

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
        if event.type == "finished" and (event.get("summary") or {}).get("best_step") is not None:
            self.best_step = event["summary"]["best_step"]
            return True
        return False

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
    fig.add_trace(go.Scatter(name="train loss (smoothed)", mode="lines", line={"color": "#1f77b4", "width": 2}), 1, 1)
    fig.add_trace(go.Scatter(name="eval loss", mode="lines+markers", line={"color": "#d62728"}), 1, 1)
    fig.add_trace(go.Scatter(name="learning rate", mode="lines", line={"color": "#7f7f7f"}), 2, 1)
    fig.update_layout(title=title or None, height=420, margin={"l": 50, "r": 20, "t": 40 if title else 20, "b": 40},
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
        evaluation.marker = {"size": [14 if k else 6 for k in kept], "symbol": ["star" if k else "circle" for k in kept]}
    lr.x, lr.y = curves.steps, curves.lr
    traces = {trace.name: trace for trace in fig.data[4:]}
    for name, (steps, values) in curves.extra.items():
        label = EXTRA_SERIES[name]
        if label not in traces:
            import plotly.graph_objects as go

            fig.add_trace(go.Scatter(name=label, mode="lines+markers" if name.startswith("eval_") else "lines"), 1, 1)
            traces[label] = fig.data[-1]
        traces[label].x, traces[label].y = steps, values


def curves_figure(events: Iterable[Event], title: str = "") -> Any:
    fig = empty_figure(title)
    apply_curves(fig, Curves.from_events(events))
    return fig


class StaticChart:
    """Displays a figure as plotly JSON (JupyterLab, VS Code render it natively) plus an HTML version
    that loads plotly.js from its CDN, for viewers without a plotly renderer (nbviewer, GitHub)."""

    def __init__(self, figure: Any) -> None:
        self.figure = figure

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"application/vnd.plotly.v1+json": self.figure.to_plotly_json(),
                "text/html": self.figure.to_html(full_html=False, include_plotlyjs="cdn"),
                "text/plain": f"<chart: {len(self.figure.data)} traces>"}

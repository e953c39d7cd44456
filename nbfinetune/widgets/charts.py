"""Curves from events: the series every chart of a run is drawn from, and the figure layout."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..events import Event
from ..run_state import EXTRA_SERIES, SMOOTHING, Curves

__all__ = ["EXTRA_SERIES", "SMOOTHING", "Curves", "apply_curves", "curves_chart", "curves_figure",
           "curves_svg", "empty_figure", "svg_html"]

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

"""Compare runs: their curves overlaid in one figure and a table of settings and final metrics."""

from __future__ import annotations

from typing import Any

from ..run_state import Curves

_SETTINGS = {"model": ("model",), "data": ("data", "path"), "steps": ("train", "max_steps"),
             "lr": ("train", "lr"), "r": ("lora", "r"), "alpha": ("lora", "alpha"),
             "batch_size": ("train", "batch_size"), "max_seq_len": ("data", "max_seq_len")}


def comparison_table(runs: list[Any]) -> Any:
    """A pandas DataFrame, one row per run: settings, status and final metrics (base in parentheses)."""
    import pandas as pd

    rows = []
    for run in runs:
        config, summary = run.store.config(run.id), run.summary()
        row: dict[str, Any] = {"run": run.id, "name": config.get("name") or "", "status": summary.status}
        for name, path in _SETTINGS.items():
            value: Any = config
            for key in path:
                value = (value or {}).get(key)
            row[name] = value
        row["last_loss"] = summary.last_loss
        row["eval_loss"] = summary.eval_loss
        for metric, value in summary.metrics.items():
            row[metric] = value
            row[f"base {metric}"] = summary.base_metrics.get(metric)
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def draw_run(fig: Any, index: int, curves: Curves, label: str) -> None:
    """Run number `index`'s smoothed train loss (solid) and eval loss (dotted) as traces 2·index and
    2·index+1 of `fig`, added the first time and updated after — so live views redraw in place."""
    from plotly.colors import qualitative

    color = qualitative.Plotly[index % len(qualitative.Plotly)]
    while len(fig.data) < 2 * (index + 1):
        fig.add_scatter(mode="lines")
    train, evaluation = fig.data[2 * index], fig.data[2 * index + 1]
    train.update(x=curves.steps, y=curves.smoothed, name=f"{label} train (smoothed)", mode="lines",
                 line={"color": color}, legendgroup=label)
    evaluation.update(x=curves.eval_steps, y=curves.eval_loss, name=f"{label} eval", mode="lines+markers",
                      line={"color": color, "dash": "dot"}, legendgroup=label)


def comparison_figure(runs: list[Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for index, run in enumerate(runs):
        draw_run(fig, index, Curves.from_events(run.events()), _label(run))
    fig.update_layout(height=420, template="plotly_white", xaxis_title="step", yaxis_title="loss",
                      margin={"l": 50, "r": 20, "t": 30, "b": 40})
    return fig


def _label(run: Any) -> str:
    return run.store.config(run.id).get("name") or run.id


def comparison_svg(runs: list[Any]) -> str:
    from plotly.colors import qualitative

    from .svg import Series, line_chart

    series = []
    for index, run in enumerate(runs):
        curves, label = Curves.from_events(run.events()), _label(run)
        color = qualitative.Plotly[index % len(qualitative.Plotly)]
        series += [Series(f"{label} train", curves.steps, curves.smoothed, color=color, width=2),
                   Series(f"{label} eval", curves.eval_steps, curves.eval_loss, color=color, dash=True,
                          markers=True)]
    return line_chart(series)


class Comparison:
    """Shown as two outputs — the chart, then the table — because a frontend shows one mimetype per
    output: JupyterLab picks the interactive chart and would never show a table riding along in HTML."""

    def __init__(self, runs: list[Any]) -> None:
        self.runs = runs
        self.table = comparison_table(runs)
        self.figure = comparison_figure(runs)
        self.svg = comparison_svg(runs)

    def chart(self) -> Any:
        from .charts import StaticChart

        return StaticChart(self.figure, self.svg)

    def table_bundle(self) -> dict[str, Any]:
        return {"text/html": self.table.to_html(float_format=lambda v: f"{v:.4g}"),
                "text/plain": self.table.to_string()}

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.chart())
        display(self.table_bundle(), raw=True)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from .charts import svg_html

        table = self.table_bundle()
        return {"text/html": svg_html(self.svg) + table["text/html"], "text/plain": table["text/plain"]}

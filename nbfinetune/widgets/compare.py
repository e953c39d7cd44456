"""Compare runs: their curves overlaid in one figure and a table of settings and final metrics."""

from __future__ import annotations

from typing import Any

from .charts import Curves

_SETTINGS = {"model": ("model",), "data": ("data", "path"), "steps": ("train", "max_steps"), "lr": ("train", "lr"),
             "r": ("lora", "r"), "alpha": ("lora", "alpha"), "batch_size": ("train", "batch_size"),
             "max_seq_len": ("data", "max_seq_len")}


def comparison_table(runs: list[Any]) -> Any:
    """A pandas DataFrame, one row per run: settings, status and final metrics (base in parentheses)."""
    import pandas as pd

    rows = []
    for run in runs:
        config, summary = run.store.config(run.id), run.summary()
        row: dict[str, Any] = {"run": run.id, "status": summary.status}
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


def draw_run(fig: Any, index: int, run: Any, label: str) -> None:
    """Run number `index`'s smoothed train loss (solid) and eval loss (dotted) as traces 2·index and
    2·index+1 of `fig`, added the first time and updated after — so live views redraw in place."""
    from plotly.colors import qualitative

    curves = Curves.from_events(run.events())
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
        draw_run(fig, index, run, run.id)
    fig.update_layout(height=420, template="plotly_white", xaxis_title="step", yaxis_title="loss",
                      margin={"l": 50, "r": 20, "t": 30, "b": 40})
    return fig


class Comparison:
    def __init__(self, runs: list[Any]) -> None:
        self.runs = runs
        self.table = comparison_table(runs)
        self.figure = comparison_figure(runs)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from .charts import StaticChart

        bundle = StaticChart(self.figure)._repr_mimebundle_()
        bundle["text/html"] += self.table.to_html(float_format=lambda v: f"{v:.4g}")
        bundle["text/plain"] = self.table.to_string()
        return bundle

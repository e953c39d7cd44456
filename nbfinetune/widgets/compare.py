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


def comparison_figure(runs: list[Any]) -> Any:
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    for index, run in enumerate(runs):
        curves = Curves.from_events(run.events())
        color = qualitative.Plotly[index % len(qualitative.Plotly)]
        fig.add_scatter(x=curves.steps, y=curves.smoothed, mode="lines", name=f"{run.id} train (smoothed)",
                        line={"color": color}, legendgroup=run.id)
        fig.add_scatter(x=curves.eval_steps, y=curves.eval_loss, mode="lines+markers", name=f"{run.id} eval",
                        line={"color": color, "dash": "dot"}, legendgroup=run.id)
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

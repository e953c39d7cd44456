"""What `evaluate` returns: the per-example DataFrame, a per-model summary, and a light view (HTML tables
and small plotly figures that stay in a saved notebook: see widgets/charts.StaticChart)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from .judge import Judge
from .models import Target


@dataclass
class EvalResults:
    frame: Any  # pandas DataFrame, one row per (model, example)
    targets: list[Target]
    metrics: list[str]
    judges: list[Judge]
    settings: Any

    @property
    def df(self) -> Any:
        return self.frame

    def summary(self) -> Any:
        """Per model: each metric's mean, latency p50/p95, mean tokens, errors, cost per request."""
        import pandas as pd

        rows = []
        for target in self.targets:
            part = self.frame[self.frame["model"] == target.label]
            latency = part["latency_s"].dropna()
            row: dict[str, Any] = {"model": target.label, "kind": target.kind}
            for metric in self.metrics:
                row[metric] = part[metric].dropna().mean() if metric in part else None
            row.update({"latency_p50_s": latency.quantile(0.5) if len(latency) else None,
                        "latency_p95_s": latency.quantile(0.95) if len(latency) else None,
                        "input_tokens": part["input_tokens"].dropna().mean(),
                        "output_tokens": part["output_tokens"].dropna().mean(),
                        "errors": int(part["error"].notna().sum()),
                        "usd_per_request": (part["cost_usd"].dropna().mean()
                                            if part["cost_usd"].notna().any() else None)})
            rows.append(row)
        return pd.DataFrame(rows).set_index("model")

    def worst(self, n: int = 3, metric: str | None = None) -> Any:
        """The n examples each model does worst on (by `metric`, the first metric by default), side by
        side."""
        metric = metric or (self.metrics[0] if self.metrics else None)
        frame = self.frame
        if metric is None:
            return frame.head(0)
        means = frame.groupby("example")[metric].mean().sort_values(na_position="first")
        examples = list(means.index[:n])
        wide = frame[frame["example"].isin(examples)].pivot(index="example", columns="model", values="output")
        references = frame.drop_duplicates("example").set_index("example").loc[examples, "reference"]
        wide.insert(0, "reference", references)
        return wide.loc[examples]

    def figure(self) -> Any:
        """Scores per model, and the latency distribution."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        summary = self.summary()
        fig = make_subplots(rows=1, cols=2, subplot_titles=("score per model", "latency (s)"))
        for metric in self.metrics:
            scores = [None if value != value else value for value in summary[metric]]  # NaN is not JSON
            fig.add_trace(go.Bar(name=metric, x=list(summary.index), y=scores), 1, 1)
        for target in self.targets:
            latency = self.frame.loc[self.frame["model"] == target.label, "latency_s"].dropna()
            fig.add_trace(go.Box(name=target.label, y=[round(v, 3) for v in latency], showlegend=False), 1, 2)
        fig.update_layout(height=320, margin={"l": 40, "r": 10, "t": 40, "b": 40}, template="plotly_white",
                          barmode="group", legend={"orientation": "h", "y": -0.15})
        return fig

    def economics(self, **assumptions: Any) -> Any:
        from .economics import economics

        return economics(self, **assumptions)

    def html(self) -> str:
        parts = ["<h4>Evaluation</h4>", self.summary().to_html(float_format=lambda v: f"{v:.3g}", na_rep="–")]
        for judge in self.judges:
            parts.append(f"<p style='color:#555'>{html.escape(str(judge.usage))}</p>")
        parts += ["<h4>Worst examples, side by side</h4>", self.worst().to_html(na_rep="(error)")]
        return "".join(parts)

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        from ..widgets.charts import StaticChart

        display(HTML(self.html()))
        display(StaticChart(self.figure(), self.svg()))

    def svg(self) -> str:
        """The saved notebook's copy: each metric per model, and latency p50 (bar) to p95 (whisker)."""
        summary = self.summary()
        rows: list[tuple[str, float | None, float | None, str]] = [
            (f"{model} · {metric}", _finite(summary.loc[model, metric]), None, "#1f77b4")
            for model in summary.index for metric in self.metrics]
        rows += [(f"{model} · latency s", _finite(summary.loc[model, "latency_p50_s"]),
                  _finite(summary.loc[model, "latency_p95_s"]), "#7f7f7f") for model in summary.index]
        return bars_svg(rows, "scores (0-1) and latency p50-p95 (s) per model")

    def __repr__(self) -> str:
        return (f"<EvalResults {len(self.targets)} models × {self.frame['example'].nunique()} examples>\n"
                f"{self.summary()}")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


def bars_svg(rows: list[tuple[str, float | None, float | None, str]], title: str) -> str:
    """Horizontal bars, one per (label, value, whisker end, colour), each scaled to its own kind's largest
    value: scores to 1, seconds to the slowest p95. A few hundred bytes per row, no script."""
    from ..widgets.svg import _svg

    width, label_w, row_h, top = 640, 260, 16, 24
    height = top + row_h * len(rows) + 8
    scale: dict[str, float] = {}
    for _, value, whisker, colour in rows:
        floor = 1e-9 if colour != "#1f77b4" else 1.0  # scores are scaled to 1 at least
        scale[colour] = max(scale.get(colour, 0.0), whisker or 0.0, value or 0.0, floor)
    body = []
    for index, (label, value, whisker, colour) in enumerate(rows):
        y = top + index * row_h
        body.append(f"<text x='{label_w - 6}' y='{y + 11}' text-anchor='end'>"
                    f"{html.escape(label[:48])}</text>")
        if value is None:
            body.append(f"<text x='{label_w}' y='{y + 11}' fill='#999'>–</text>")
            continue
        span = width - label_w - 60
        length = span * value / scale[colour]
        body.append(f"<rect x='{label_w}' y='{y + 2}' width='{max(length, 1):.1f}' height='{row_h - 5}' "
                    f"fill='{colour}'/>")
        end = length
        if whisker is not None:
            end = span * whisker / scale[colour]
            body.append(f"<line x1='{label_w + length:.1f}' x2='{label_w + end:.1f}' y1='{y + 8}' "
                        f"y2='{y + 8}' stroke='{colour}'/>")
        body.append(f"<text x='{label_w + max(length, end) + 4:.1f}' y='{y + 11}'>{value:.3g}</text>")
    return _svg("".join(body), width, height, title)

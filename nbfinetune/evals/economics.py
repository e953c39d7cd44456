"""When does a fine-tune pay? Per model: quality, latency p50/p95 and the monthly cost at a volume.

API model: measured tokens per request × its prices. Fine-tune (or base) served on Modal: GPU-seconds
per request from the measured latency, shared by the requests a GPU serves at once, at the dated GPU
price (prices.json), with scale-to-zero: outside busy time a container costs only its cold start and
idle timeout; plus the run's own training cost spread over `amortize_months`. Every assumption is a
field of `Assumptions`, shown on the view, and can be changed: `nbft.economics(results, gpu="H100")`."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..pricing import parse_gpu, price_table

DAY_S = 86400.0


@dataclass(frozen=True)
class Assumptions:
    requests_per_month: float = 100_000
    gpu: str = "L4"  # the GPU that would serve the fine-tune on Modal
    # Latency measured in the evaluation is on this machine: scale it to the serving GPU (1 = as measured).
    latency_scale: float = 1.0
    # Requests one GPU serves at once with continuous batching (README Serving: 2.6-4.1x at 8-32 clients).
    concurrent_requests: float = 4.0
    active_hours_per_day: float = 12.0  # traffic spread evenly over these hours; none outside them
    idle_timeout_s: float = 300.0  # scale-to-zero: a container stays up this long after its last request
    cold_start_s: float = 30.0
    amortize_months: float = 12.0  # the training cost is spread over this many months
    training_usd: float | None = None  # None: the run's own cost (cost_usd in its summary), 0 when unknown

    def describe(self) -> str:
        table = price_table()
        name, count = parse_gpu(self.gpu)
        price = table["per_gpu_second"][name] * count * 3600
        return (f"{self.requests_per_month:,.0f} requests/month; served on Modal {self.gpu} at "
                f"${price:.2f}/h (prices of {table['date']}, {table['source']}); GPU time per request = "
                "measured latency × "
                f"{self.latency_scale:g} ÷ {self.concurrent_requests:g} concurrent requests; traffic over "
                f"{self.active_hours_per_day:g} h/day; scale to zero after {self.idle_timeout_s:g} s idle, "
                f"{self.cold_start_s:g} s cold start; training cost over {self.amortize_months:g} months; "
                "API cost = measured tokens × the endpoint's prices.")


def serving_usd(requests: float, seconds_per_request: float, a: Assumptions) -> float:
    """Monthly GPU cost of serving `requests` with scale-to-zero."""
    name, count = parse_gpu(a.gpu)
    per_s = price_table()["per_gpu_second"][name] * count
    busy = requests * seconds_per_request / a.concurrent_requests
    active = a.active_hours_per_day * 30 * 3600
    # Sparse traffic: each request wakes a container that then idles; dense: one stays up the active hours.
    sparse = requests * (a.cold_start_s + seconds_per_request + a.idle_timeout_s)
    return per_s * max(busy, min(sparse, active))


@dataclass
class ModelCost:
    model: str
    kind: str
    quality: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    monthly_usd: float | None
    how: str

    def at(self, requests: float, a: Assumptions, per_request: float | None, seconds: float | None,
           training: float) -> float | None:
        if self.kind == "endpoint":
            return None if per_request is None else requests * per_request
        return serving_usd(requests, seconds or 0.0, a) + training / a.amortize_months


class Economics:
    def __init__(self, results: Any, assumptions: Assumptions) -> None:
        self.results, self.assumptions = results, assumptions
        summary = results.summary()
        a = assumptions
        self.inputs: dict[str, tuple[float | None, float | None, float]] = {}
        self.rows: list[ModelCost] = []
        quality_metric = results.metrics[0] if results.metrics else None
        for target in results.targets:
            s = summary.loc[target.label]
            per_request = _num(s["usd_per_request"]) if target.kind == "endpoint" else None
            part = results.frame[results.frame["model"] == target.label]["latency_s"].dropna()
            seconds = float(part.mean()) * a.latency_scale if len(part) else None
            training = a.training_usd if a.training_usd is not None else _training_cost(target)
            self.inputs[target.label] = (per_request, seconds, training if target.kind == "run" else 0.0)
            if target.kind == "endpoint":
                how = ("measured tokens × prices" if per_request is not None
                       else "no prices given for this endpoint")
            else:
                how = f"{seconds or 0:.2f} GPU-s per request on {a.gpu}" + (
                    f" + ${training:.2f} training / {a.amortize_months:g} months" if target.kind == "run"
                    else "")
            quality = None if quality_metric is None else _num(s[quality_metric])
            cost = ModelCost(target.label, target.kind, quality,
                             _num(s["latency_p50_s"]), _num(s["latency_p95_s"]), None, how)
            cost.monthly_usd = cost.at(a.requests_per_month, a, *self.inputs[target.label])
            self.rows.append(cost)

    def cost_at(self, model: str, requests: float) -> float | None:
        row = next(r for r in self.rows if r.model == model)
        return row.at(requests, self.assumptions, *self.inputs[model])

    def break_even(self, model: str, against: str) -> float | None:
        """The monthly volume above which `model` costs less than `against` (None: never within 10^9)."""
        volumes = [10 ** (k / 20) for k in range(0, 181)]
        for volume in volumes:
            mine, theirs = self.cost_at(model, volume), self.cost_at(against, volume)
            if mine is None or theirs is None:
                return None
            if mine < theirs:
                return volume
        return None

    def frame(self) -> Any:
        import pandas as pd

        quality = self.results.metrics[0] if self.results.metrics else "quality"
        frame = (pd.DataFrame([asdict(r) for r in self.rows]).rename(columns={"quality": quality})
                 .set_index("model"))
        apis = [r.model for r in self.rows if r.kind == "endpoint" and self.inputs[r.model][0] is not None]
        if apis:
            frame[f"break-even vs {apis[0]} (requests/month)"] = [
                None if r.kind == "endpoint" else self.break_even(r.model, apis[0]) for r in self.rows]
        return frame

    def figure(self) -> Any:
        import plotly.graph_objects as go

        volumes = [10 ** (k / 4) for k in range(8, 33)]  # 100 to 100M a month
        fig = go.Figure()
        for row in self.rows:
            costs = [self.cost_at(row.model, v) for v in volumes]
            known = [c for c in costs if c is not None]
            if len(known) == len(costs):
                fig.add_trace(go.Scatter(name=row.model, x=volumes, y=[round(c, 2) for c in known],
                                         mode="lines"))
        fig.add_vline(x=self.assumptions.requests_per_month, line_dash="dot", line_color="#888")
        fig.update_layout(title="monthly cost against volume", height=320, template="plotly_white",
                          margin={"l": 50, "r": 10, "t": 40, "b": 40},
                          xaxis={"type": "log", "title": "requests/month"},
                          yaxis={"type": "log", "title": "USD/month"})
        return fig

    def html(self) -> str:
        return ("<h4>Economics</h4>" + self.frame().to_html(float_format=lambda v: f"{v:,.3g}", na_rep="–")
                + f"<p style='color:#555'>Assumptions (change any: economics(results, field=value)): "
                  f"{html.escape(self.assumptions.describe())}</p>")

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        from ..widgets.charts import StaticChart

        display(HTML(self.html()))
        display(StaticChart(self.figure(), self.svg()))

    def svg(self) -> str:
        """The saved copy of the cost-vs-volume plot (log-log, as decades)."""
        import math

        from ..widgets.svg import Series, line_chart

        volumes = [10 ** (k / 4) for k in range(8, 33)]
        colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
        series = []
        for index, row in enumerate(self.rows):
            costs = [self.cost_at(row.model, v) for v in volumes]
            positive = [c for c in costs if c is not None and c > 0]
            if len(positive) == len(costs):
                series.append(Series(row.model[:30], [math.log10(v) for v in volumes],
                                     [math.log10(c) for c in positive], color=colours[index % len(colours)],
                                     width=2))
        return line_chart(series, "monthly cost against volume", x_title="log10 requests/month",
                          y_title="log10 USD/month")

    def __repr__(self) -> str:
        return f"{self.frame()}\nAssumptions: {self.assumptions.describe()}"


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number


def _training_cost(target: Any) -> float:
    if target.run is None:
        return 0.0
    return float(target.run.summary().cost_usd or 0.0)


def economics(results: Any, assumptions: Assumptions | None = None, **changes: Any) -> Economics:
    """The economics view of `evaluate`'s results; changes: any field of `Assumptions`."""
    known = {f.name for f in fields(Assumptions)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TypeError(f"economics: unknown assumption {unknown[0]!r}; known: {', '.join(sorted(known))}")
    assumptions = replace(assumptions or Assumptions(), **changes)
    parse_gpu(assumptions.gpu)
    return Economics(results, assumptions)

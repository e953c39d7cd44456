"""Pre-flight view: what the model will be trained on, and what is wrong with the data, before any
GPU second is spent — detected format, the validation report, token lengths against max_seq_len, and
examples rendered exactly as the model sees them with the trained spans highlighted."""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..config import DATA_FILE_KINDS, FORMATS, SAMPLE_DATA, default_model, nbfinetune_home
from .static import StaticCopy

# Rows longer than this many times max_seq_len are counted in the histogram's last bar, so one 12k-token
# outlier does not squeeze every other row into the first bar.
CLIP_FACTOR = 1.5


class Preflight(StaticCopy, widgets.VBox):
    def __init__(self, data: Any = None, model: str | None = None, max_seq_len: int = 512,
                 namespace: dict[str, Any] | None = None) -> None:
        self.namespace = namespace if namespace is not None else _user_namespace()
        initial = data if isinstance(data, str) else (SAMPLE_DATA if data is None else "")
        self.source = widgets.Text(value=initial, description="data",
                                   placeholder="file, folder, hub id (org/name) or sample:people",
                                   layout=widgets.Layout(width="60%"))
        variables = [(n, n) for n in _data_variables(self.namespace)]
        self.variable = widgets.Dropdown(options=[("—", "")] + variables, description="or variable")
        self.upload = widgets.FileUpload(accept=",".join(DATA_FILE_KINDS), multiple=False,
                                         description="Upload")
        self.format = widgets.Dropdown(options=FORMATS, value="auto", description="format")
        self.model = widgets.Text(value=model or default_model(), description="model",
                                  layout=widgets.Layout(width="50%"))
        self.max_seq_len = widgets.BoundedIntText(value=max_seq_len, min=8, max=131072,
                                                  description="max_seq_len")
        self.check_button = widgets.Button(description="Check data", button_style="primary", icon="search")
        self.check_button.on_click(lambda _b: self.check())
        self.status = widgets.HTML()
        self.summary = widgets.HTML()
        self.histogram: Any = None  # the plotly Figure of the last check
        self.histogram_svg = ""
        # Plotly JSON + SVG in an Output widget: small widget state, and hidden until there is data.
        self.chart = widgets.Output(layout=widgets.Layout(display="none"))
        self.problems = widgets.HTML()
        self.preview = widgets.HTML()
        self._data_object = data if data is not None and not isinstance(data, str) else None
        self.validation: Any = None
        inputs = widgets.VBox([widgets.HBox([self.source, self.variable, self.upload]),
                               widgets.HBox([self.format, self.model, self.max_seq_len, self.check_button])])
        super().__init__([inputs, self.status, self.summary, self.chart, self.problems, self.preview])
        self.add_class("nbfinetune-preflight")
        if data is not None:
            self.check(wait=True)

    # --- which data ------------------------------------------------------------------------------
    def selected_source(self) -> str:
        """The chosen data as a path or hub id: an upload, a notebook variable, or the text box."""
        from ..data.materialize import materialize

        if self.upload.value:
            item = self.upload.value[0]
            target = Path(nbfinetune_home()) / "uploads" / Path(item["name"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bytes(item["content"]))
            return str(target)
        if self.variable.value:
            return materialize(self.namespace[self.variable.value])[0]
        if self._data_object is not None:
            return materialize(self._data_object)[0]
        return self.source.value.strip()

    # --- checking --------------------------------------------------------------------------------
    def check(self, wait: bool = False) -> None:
        thread = threading.Thread(target=self._check, daemon=True)
        thread.start()
        if wait:
            thread.join()

    def _check(self) -> None:
        from ..core.models import resolve_model
        from ..core.setup import load_tokenizer
        from ..data.validate import validate

        self.check_button.disabled = True
        self.status.value = "<i>checking…</i>"
        try:
            source = self.selected_source()
            tokenizer = load_tokenizer(resolve_model(self.model.value.strip()))
            self.validation = validate(source, self.format.value, tokenizer, self.max_seq_len.value)
            self.status.value = ""
            self._show(tokenizer)
        except Exception as exc:  # shown in the widget: a bad file must never become a traceback
            self.status.value = (f"<span style='color:#dc3545'><b>cannot check:</b> {html.escape(str(exc))}"
                                 "</span>")
        finally:
            self.check_button.disabled = False
            self.refresh_static()

    def _show(self, tokenizer: Any) -> None:
        from ..data.render import trained_spans

        result = self.validation
        report = result.report
        ok_color = ("#198754" if report.valid and not report.errors
                    else ("#fd7e14" if report.valid else "#dc3545"))
        tokens = report.tokens
        stats = (f" · tokens per row: min {tokens['min']}, median {tokens['median']}, p95 {tokens['p95']}, "
                 f"max {tokens['max']} · {tokens['total']:,} tokens per epoch") if tokens else ""
        truncated = f" · {report.truncated} truncated" if report.truncated else ""
        self.summary.value = (
            f"<b>format:</b> {html.escape(str(report.format))} · "
            f"<b style='color:{ok_color}'>{report.valid} of {report.rows} rows usable</b>"
            + truncated + stats)
        self._draw_histogram(result.lengths, result.max_seq_len)
        rows = "".join(f"<tr><td>{html.escape(p.file or '')} {p.row}</td><td>{html.escape(p.severity)}</td>"
                       f"<td style='text-align:left'>{html.escape(p.message)}</td></tr>"
                       for p in report.problems[:50])
        more = f"<p>… and {report.problem_count - 50} more</p>" if report.problem_count > 50 else ""
        self.problems.value = (f"<details open><summary>{report.problem_count} problem(s)</summary><table>"
                               f"<thead><tr><th>row</th><th>kind</th><th>problem</th></tr></thead>"
                               f"<tbody>{rows}</tbody></table>{more}</details>"
                               if report.problem_count else "<p>No problems found.</p>")
        examples = []
        for rendered in result.preview:
            body = "".join(
                f"<span style='background:#d1e7dd' title='trained'>{html.escape(text)}</span>" if trained
                else f"<span style='color:#666'>{html.escape(text)}</span>"
                for text, trained in trained_spans(tokenizer, rendered))
            examples.append(f"<div style='white-space:pre-wrap;font-family:monospace;border:1px solid #ddd;"
                            f"padding:6px;margin:4px 0'><b>row {rendered.row}</b>\n{body}</div>")
        self.preview.value = ("<details><summary>examples as the model sees them (green: trained on)"
                              "</summary>" + "".join(examples) + "</details>")


    def _draw_histogram(self, lengths: list[int], max_seq_len: int) -> None:
        import plotly.graph_objects as go

        from .charts import StaticChart
        from .svg import histogram

        clip = int(max_seq_len * CLIP_FACTOR)
        over = [n for n in lengths if n > clip]
        title = "tokens per row" + (f" ({len(over)} longer than {clip:,}, up to {max(over):,}, counted in "
                                    f"the last bar)" if over else "")
        shown = [min(n, clip) for n in lengths]
        self.histogram = go.Figure(go.Histogram(x=shown, nbinsx=40, name="rows"), layout={
            "height": 240, "margin": {"l": 40, "r": 10, "t": 30, "b": 40}, "title": title,
            "template": "plotly_white", "xaxis": {"title": "tokens"}, "yaxis": {"title": "rows"},
            "shapes": [{"type": "line", "x0": max_seq_len, "x1": max_seq_len, "y0": 0, "y1": 1,
                        "yref": "paper", "line": {"color": "#dc3545", "dash": "dash"}}],
            "annotations": [{"x": max_seq_len, "y": 1, "yref": "paper", "text": "max_seq_len",
                             "showarrow": False, "yanchor": "bottom"}]})
        self.histogram_svg = histogram(shown, clip=clip if over else None, marker=max_seq_len,
                                       marker_label="max_seq_len", title=title)
        bundle = StaticChart(self.histogram, self.histogram_svg)._repr_mimebundle_()
        bundle.pop("image/svg+xml")
        self.chart.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
        self.chart.layout.display = None

    # --- the static copy saved with the notebook ------------------------------------------------------
    def static_html(self) -> str:
        from .charts import svg_html

        chart = svg_html(self.histogram_svg) if self.histogram_svg else ""
        return (f"<div class='nbft-preflight-static'><b>pre-flight:</b> {html.escape(self.selected_text())}"
                f"<div>{self.status.value}</div><div>{self.summary.value}</div>{chart}{self.problems.value}"
                f"{self.preview.value}</div>")

    def static_text(self) -> str:
        summary = self.validation.report if self.validation is not None else None
        return (f"<pre-flight of {self.selected_text()}: {summary.valid} of {summary.rows} rows usable>"
                if summary else f"<pre-flight of {self.selected_text()}: not checked>")

    def selected_text(self) -> str:
        if self.upload.value:
            return self.upload.value[0]["name"]
        return self.variable.value or self.source.value


def _user_namespace() -> dict[str, Any]:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell.user_ns if shell is not None else {}
    except ImportError:
        return {}


def _data_variables(namespace: dict[str, Any]) -> list[str]:
    kinds = ("DataFrame", "Dataset", "DatasetDict")
    return sorted(n for n, v in namespace.items() if not n.startswith("_") and type(v).__name__ in kinds)

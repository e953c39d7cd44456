"""The pre-flight widget through its widget state."""

import pandas as pd

from nbfinetune.data.render import render, trained_spans
from nbfinetune.data.formats import Example
from nbfinetune.widgets.preflight import Preflight

from tests.helpers import chat_row, write_jsonl


def test_report_histogram_problems_and_highlighted_examples(home, tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("q1", "a1"), "{bad", chat_row("q2", "word " * 80)])
    view = Preflight(str(path), model=tiny_model, max_seq_len=32, namespace={})
    assert view.validation is not None, view.status.value
    assert "chat" in view.summary.value and "2 of 3 rows usable" in view.summary.value
    assert "1 truncated" in view.summary.value
    assert len(view.histogram.data[0].x) == 2 and view.histogram.layout.shapes[0].x0 == 32
    assert "invalid JSON" in view.problems.value and "<td> 2</td>" in view.problems.value
    assert "background:#d1e7dd" in view.preview.value and "a1" in view.preview.value


def test_dataframe_variable_and_bad_input(home, tiny_model):
    frame = pd.DataFrame([{"prompt": "2+2?", "completion": "4"}] * 3)
    view = Preflight(model=tiny_model, namespace={"frame": frame, "other": 3})
    assert [label for label, _ in view.variable.options] == ["—", "frame"]
    view.variable.value = "frame"
    view.check(wait=True)
    assert "prompt_completion" in view.summary.value and "3 of 3 rows usable" in view.summary.value
    view.variable.value = ""
    view.source.value = "/no/such/file.jsonl"
    view.check(wait=True)
    assert "cannot check" in view.status.value and "data file not found" in view.status.value


def test_trained_spans_cover_the_text_exactly(tiny_tokenizer):
    example = Example(messages=({"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Ada"}))
    rendered = render(tiny_tokenizer, example, 128)
    spans = trained_spans(tiny_tokenizer, rendered)
    assert "".join(text for text, _ in spans) == tiny_tokenizer.decode(rendered.input_ids)
    assert [text for text, trained in spans if trained] == ["Ada<|im_end|>\n"]


def test_no_placeholder_chart_before_a_check_and_an_outlier_is_clipped(home, tmp_path, tiny_model):
    empty = Preflight(model=tiny_model, namespace={})
    assert empty.chart.layout.display == "none"  # nothing drawn before "Check data"
    rows = [chat_row(f"q{i}", "a") for i in range(5)] + [chat_row("long", "word " * 2000)]
    view = Preflight(str(write_jsonl(tmp_path / "d.jsonl", rows)), model=tiny_model, max_seq_len=32, namespace={})
    assert max(view.histogram.data[0].x) <= 48  # clipped at 1.5 × max_seq_len, not 2000+
    assert "1 longer than 48" in view.histogram.layout.title.text
    assert view.chart.layout.display != "none"


def test_the_saved_output_is_a_readable_report(home, tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("q1", "a1"), "{bad"])
    bundle = Preflight(str(path), model=tiny_model, max_seq_len=32, namespace={})._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    static = bundle["text/html"]
    assert "1 of 2 rows usable" in static and "invalid JSON" in static and "data:image/svg+xml" in static
    assert "<script" not in static
    assert bundle["text/plain"] == f"<pre-flight of {path}: 1 of 2 rows usable>"

"""What run listings and summaries show, and deleting runs — from stored events, no training."""

from __future__ import annotations

from nbfinetune import api
from nbfinetune.config import RunConfig
from nbfinetune.runs import EventWriter, RunStore


def _failed_and_finished(home) -> tuple[RunStore, str, str]:
    store = RunStore(home)
    failed = store.create(RunConfig.from_dict({"name": "people-v2", "data": {"path": "/data/people/train.jsonl"}}))
    EventWriter(store.events_path(failed), failed).emit("failed", error="DataError", message="no usable rows")
    done = store.create(RunConfig())
    writer = EventWriter(store.events_path(done), done)
    writer.emit("started", model="m", device="cpu", total_steps=500)
    for step in range(1, 501):
        writer.emit("step", step=step, epoch=1, loss=1.0 / step, lr=1e-3)
    writer.emit("finished", adapter_path="/runs/x/adapter")
    return store, failed, done


def test_run_list_has_name_data_and_error_columns(home):
    store, failed, done = _failed_and_finished(home)
    text = repr(api.runs(store))
    header, first, second = text.splitlines()
    assert "name" in header and "data" in header
    assert first.startswith(failed) and "people-v2" in first and "train.jsonl" in first
    assert "error: DataError: no usable rows" in first
    assert second.startswith(done) and "500/500" in second
    html = api.runs(store)._repr_html_()
    assert "<th>name</th>" in html and "<th>error</th>" in html and "white-space:nowrap'><code>" + failed in html


def test_run_summary_repr_is_short_and_has_an_html_view(home):
    store, _failed, done = _failed_and_finished(home)
    summary = store.summary(done)
    assert len(summary.loss_trace) > 10
    text = repr(summary)
    assert len(text) < 200 and text.startswith(f"<RunSummary {done}: finished") and "loss_trace" not in text
    html = summary._repr_html_()
    assert "<table" in html and "/runs/x/adapter" in html and "500/500" in html

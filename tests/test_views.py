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


def _running_run(home):
    """A run whose worker (a real process holding the run's writer lock) is alive."""
    from tests.helpers import live_worker

    store = RunStore(home)
    run_id = store.create(RunConfig())
    EventWriter(store.events_path(run_id), run_id).emit("started", model="m", device="cpu", total_steps=9)
    return store, run_id, live_worker(store.path(run_id))


def test_delete_refuses_a_running_run_then_deletes(home):
    import pytest

    store, run_id, worker = _running_run(home)
    try:
        with pytest.raises(api.RunIsRunning, match="cancel it first"):
            api.delete(run_id, store)
        assert store.exists(run_id)
    finally:
        worker.kill()
        worker.wait()
    api.Run(run_id, store).delete()
    assert not store.exists(run_id) and not store.path(run_id).exists()


def test_delete_magic_asks_for_yes(ip, home, capsys):
    import pytest
    from IPython.core.error import UsageError

    store, failed, done = _failed_and_finished(home)
    ip.run_line_magic("finetune", f"delete {failed}")
    assert "To confirm: %finetune delete" in capsys.readouterr().out and store.exists(failed)
    ip.run_line_magic("finetune", f"delete {failed} --yes")
    assert f"deleted run {failed}" in capsys.readouterr().out and not store.exists(failed)
    with pytest.raises(UsageError, match="no run"):
        ip.run_line_magic("finetune", f"delete {failed} --yes")


def test_delete_command_line(home, capsys, monkeypatch):
    from nbfinetune.cli import main

    store, failed, _done = _failed_and_finished(home)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["delete", failed]) == 2 and store.exists(failed)  # no prompt possible: needs --yes
    assert main(["delete", failed, "--yes"]) == 0 and not store.exists(failed)
    store2, run_id, worker = _running_run(home)
    try:
        assert main(["delete", run_id, "--yes"]) == 2 and "cancel it first" in capsys.readouterr().err
    finally:
        worker.kill()
        worker.wait()

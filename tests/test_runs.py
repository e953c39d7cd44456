import threading
import time

import pytest

from nbfinetune.config import RunConfig
from nbfinetune.events import Event, EventError, redact
from nbfinetune.runs import EventWriter, RunNotFound, RunStore, read_events, summarize, validate_run_id


def test_event_round_trip_and_contract():
    event = Event("step", "r1", 3, 1.5, {"step": 1, "epoch": 0.1, "loss": 2.0, "lr": 1e-3})
    again = Event.from_json(event.to_json())
    assert again == event
    assert event.to_dict()["v"] == 1
    with pytest.raises(EventError, match="lacks loss"):
        Event("step", "r1", 1, 0.0, {"step": 1, "epoch": 0, "lr": 1})
    with pytest.raises(EventError, match="unknown event type"):
        Event("bogus", "r1", 1, 0.0, {})


def test_writer_seq_is_dense_across_writers(tmp_path):
    path = tmp_path / "events.jsonl"
    first = EventWriter(path, "r")
    first.emit("log", level="info", message="a")
    first.emit("log", level="info", message="b")
    first.close()
    second = EventWriter(path, "r")  # e.g. the supervisor after the trainer died
    second.emit("failed", error="X", message="boom")
    assert [e.seq for e in read_events(path).events] == [1, 2, 3]


def test_torn_and_corrupt_lines_are_reported_not_fatal(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, "r")
    writer.emit("log", level="info", message="ok")
    with open(path, "a") as handle:
        handle.write("{not json}\n")
    writer.emit("log", level="info", message="after")
    with open(path, "a") as handle:
        handle.write('{"v":1,"type":"log"')  # a crash mid-write
    result = read_events(path)
    assert [e["message"] for e in result.events] == ["ok", "after"]
    assert result.problems and result.problems[0][0] == 2


def test_follow_sees_events_written_later_and_two_readers_agree(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)

    def produce():
        for step in range(1, 6):
            writer.emit("step", step=step, epoch=0, loss=1.0 / step, lr=0.1)
            time.sleep(0.02)
        writer.emit("finished", adapter_path="x")

    seen: dict[int, list[int]] = {0: [], 1: []}

    def consume(key):
        seen[key] = [e.seq for e in store.follow(run_id, poll_s=0.01)]

    readers = [threading.Thread(target=consume, args=(k,)) for k in seen]
    for r in readers:
        r.start()
    produce()
    for r in readers:
        r.join(5)
    assert seen[0] == seen[1] == [1, 2, 3, 4, 5, 6]
    summary = store.summary(run_id)
    assert (summary.status, summary.step, summary.adapter_path) == ("finished", 5, "x")


def test_follow_stops_when_worker_is_gone(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig())
    EventWriter(store.events_path(run_id), run_id).emit("log", level="info", message="x")
    assert [e.seq for e in store.follow(run_id, poll_s=0.01, worker_alive=lambda: False)] == [1]


def test_store_listing_ids_and_errors(tmp_path):
    store = RunStore(tmp_path)
    assert store.list() == []
    a = store.create(RunConfig(name="first"))
    b = store.create(RunConfig(name="second"))
    assert store.ids() == [a, b] and store.latest() == b
    assert store.list()[0].name == "first" and store.list()[0].status == "pending"
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        store.require("nope")
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="malformed run id"):
            validate_run_id(bad)
    store.delete(a)
    assert store.ids() == [b]


def test_summary_marks_lost_runs():
    events = [Event("started", "r", 1, 0.0, {"model": "m", "device": "cpu", "total_steps": 3})]
    assert summarize("r", {}, events, worker_alive=False).status == "lost"
    assert summarize("r", {}, events, worker_alive=True).status == "running"


def test_live_summary_parses_only_new_events_and_survives_a_replaced_file(tmp_path, monkeypatch):
    import os

    import nbfinetune.runs as runs

    store = RunStore(tmp_path)
    run_id = store.create(RunConfig())
    from nbfinetune.ownership import take_lock

    lock = take_lock(store.path(run_id))  # "alive": this process holds the run's writer lock
    writer = EventWriter(store.events_path(run_id), run_id)
    writer.emit("started", model="m", device="cpu", total_steps=10)
    for step in range(1, 4):
        writer.emit("step", step=step, epoch=0.1, loss=1.0 / step, lr=1e-3)
    assert store.summary(run_id).step == 3
    parsed = []
    real_read = runs.EventTail.read
    monkeypatch.setattr(runs.EventTail, "read", lambda self: parsed.append(r := real_read(self)) or r)
    for step in range(4, 6):
        writer.emit("step", step=step, epoch=0.2, loss=1.0 / step, lr=1e-3)
    summary = store.summary(run_id)
    assert summary.step == 5 and summary.last_loss == pytest.approx(0.2)
    assert [len(r) for r in parsed] == [2]  # only the two appended lines were parsed
    writer.close()
    # A file replaced by a shorter one (re-mirrored run) is read again from the start.
    other = EventWriter(store.events_path(run_id).with_suffix(".new"), run_id)
    other.emit("started", model="m", device="cpu", total_steps=10)
    other.emit("step", step=1, epoch=0.1, loss=0.5, lr=1e-3)
    other.close()
    store.events_path(run_id).with_suffix(".new").replace(store.events_path(run_id))
    assert store.summary(run_id).step == 1
    os.close(lock)


def test_summary_of_an_early_stopped_run_reports_the_kept_adapters_scores():
    from nbfinetune.events import FinishedSummary

    kept = {"steps": 6, "best_step": 2, "stopped_early": True, "eval_loss": 0.5, "metrics": {"json_match": 0.75}}
    events = [Event("started", "r", 1, 0.0, {"model": "m", "device": "cpu", "total_steps": 12}),
              Event("eval", "r", 2, 1.0, {"step": 2, "eval_loss": 0.5, "metrics": {"json_match": 0.75}}),
              Event("eval", "r", 3, 2.0, {"step": 6, "eval_loss": 0.9, "metrics": {"json_match": 0.25}}),
              Event("finished", "r", 4, 3.0, {"adapter_path": "/a", "summary": kept})]
    summary = summarize("r", {}, events, worker_alive=False)
    assert (summary.best_step, summary.eval_loss, summary.metrics) == (2, 0.5, {"json_match": 0.75})
    assert "best evaluated step 2" in summary.describe()
    assert FinishedSummary.from_dict(kept).describe() == "stopped early at step 6; the adapter is the best evaluated one, from step 2"


def test_redact_removes_tokens(monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-secretvalue123456789")
    text = redact("token hf_abcdefghijklmnopqrstuvwxyz123 and as-secretvalue123456789 here")
    assert "hf_abc" not in text and "secretvalue" not in text and text.count("[redacted]") == 2


def test_loss_trace_is_downsampled_for_sparklines():
    events = [Event("step", "r", i, 0.0, {"step": i, "epoch": 0, "loss": float(i), "lr": 0.1}) for i in range(1, 501)]
    trace = summarize("r", {}, events, worker_alive=None).loss_trace
    assert len(trace) == 40 and trace[0] == 1.0 and trace[-1] == 500.0 and trace == sorted(trace)
    assert summarize("r", {}, events[:5], worker_alive=None).loss_trace == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_damaged_runs_stay_their_own_in_every_listing(home, capsys):
    """An empty/non-JSON/list config.json, an event with a bad seq or time, a "NaN" loss: the listing goes
    on, each damaged run says why, and a text loss never reaches a view as a loss."""
    import json

    from nbfinetune import api, cli

    from tests.damaged import make_damaged_runs

    made = make_damaged_runs(RunStore())
    by_id = {s.run_id: s for s in api.runs().runs}
    assert len(by_id) == len(made)
    for label in ("empty-config", "not-json-config", "list-config"):
        summary = by_id[made[label]]
        assert summary.status == "damaged" and "config.json" in summary.error, label
    assert "empty" in by_id[made["empty-config"]].error and "list" in by_id[made["list-config"]].error
    for label in ("seq-text", "seq-list", "time-null", "loss-nan-text", "loss-nan", "healthy"):
        assert by_id[made[label]].status == "running" and by_id[made[label]].last_loss is None, label
    assert {"seq-text", "seq-list", "time-null"} <= {
        label for label, run_id in made.items() if RunStore().events(run_id).problems}
    for run_id in made.values():
        repr(api.attach(run_id, display=False))
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert out.count("damaged") == 3 and "config.json is unreadable (empty)" in out
    assert cli.main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == len(made)


def test_writer_starts_a_fresh_line_after_a_torn_tail(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, "r")
    writer.emit("log", level="info", message="before")
    writer.close()
    with open(path, "a") as handle:
        handle.write('{"v":1,"type":"step","run_id":"r","se')  # the disk filled mid-line
    again = EventWriter(path, "r")
    again.emit("failed", error="X", message="after")
    again.close()
    result = read_events(path)
    assert [e.type for e in result.events] == ["log", "log", "failed"], "nothing glued onto the torn line"
    assert [e.seq for e in result.events] == [1, 2, 3]
    assert "torn last line" in result.events[1]["message"] and len(result.problems) == 1


def test_wait_shows_the_progress_bar_when_one_read_holds_the_whole_run(tmp_path, capsys):
    """A short run can start and end between two polls: the first state wait sees is already `finished`.
    The bar is still shown (the run started), at its last step."""
    from nbfinetune.api import Run
    from tests.helpers import synthetic_run

    store = RunStore(tmp_path)
    run_id = synthetic_run(store, steps=3)
    summary = Run(run_id, store).wait(timeout=10, progress=True)
    out = capsys.readouterr()
    assert summary.status == "finished" and "3/3" in out.err and "finished · step 3/3" in out.out

"""The one tail (EventTail) and the one fold (RunState), without a worker, a backend or a widget."""

import pytest

from nbfinetune.config import RunConfig
from nbfinetune.events import Event, FinishedSummary
from nbfinetune.run_state import LiveState, RunState
from nbfinetune.runs import EventWriter, RunStore, page_events
from nbfinetune.tail import EventTail


def _line(seq, type="log", **payload):
    payload = payload or {"level": "info", "message": f"m{seq}"}
    return Event(type, "r", seq, float(seq), payload).to_json() + "\n"


def test_tail_reads_only_what_was_appended_and_waits_for_a_torn_line(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == [] and tail.offset == 0  # no file yet
    path.write_text(_line(1) + _line(2))
    assert [e.seq for e in tail.read()] == [1, 2]
    assert tail.read() == []
    whole = _line(3)
    with open(path, "a") as handle:
        handle.write(whole[:10])  # a writer mid-line
    assert tail.read() == [] and tail.line == 3
    with open(path, "a") as handle:
        handle.write(whole[10:] + _line(4))
    assert [e.seq for e in tail.read()] == [3, 4] and tail.offset == path.stat().st_size
    assert tail.problems == [] and not tail.restarted


def test_tail_reports_bad_lines_with_their_numbers(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(_line(1) + "{not json\n\n" + _line(2) + '{"v": 1}\n')
    tail = EventTail(path)
    assert [e.seq for e in tail.read()] == [1, 2]
    assert [number for number, _ in tail.problems] == [2, 5] and "not JSON" in tail.problems[0][1]


def test_tail_starts_over_on_a_replaced_or_truncated_file(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(_line(1) + _line(2) + _line(3))
    tail = EventTail(path)
    assert len(tail.read()) == 3
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(_line(1) + _line(2) + _line(3) + _line(4))  # longer, but another file
    replacement.replace(path)
    assert [e.seq for e in tail.read()] == [1, 2, 3, 4] and tail.restarted
    assert tail.read() == [] and not tail.restarted
    path.write_text(_line(1))  # the same file cut shorter
    assert [e.seq for e in tail.read()] == [1] and tail.restarted


def test_live_state_folds_a_replaced_file_afresh(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(_line(1, "step", step=5, epoch=0, loss=2.0, lr=0.1))
    live = LiveState(path)
    live.update()
    assert live.state.step == 5 and live.state.losses == [2.0]
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(_line(1, "step", step=1, epoch=0, loss=3.0, lr=0.1))
    replacement.replace(path)
    live.update()
    assert live.state.step == 1 and live.state.losses == [3.0]


def test_page_events_after_the_file_was_replaced(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(_line(s) for s in range(1, 6)))
    assert [e.seq for e in page_events(path, 2, 2).events] == [3, 4]
    replacement = tmp_path / "new.jsonl"
    replacement.write_text("".join(_line(s) for s in range(1, 9)))
    replacement.replace(path)
    page = page_events(path, 5, 10)
    assert [e.seq for e in page.events] == [6, 7, 8] and not page.more


def _fold(*events):
    state = RunState()
    for seq, (type, payload) in enumerate(events, start=1):
        state.apply(Event(type, "r", seq, 100.0 + seq, payload))
    return state


STARTED = ("started", {"model": "m", "device": "cpu", "total_steps": 10, "precision": "fp32"})


def test_fold_of_a_run_that_finished_with_early_stopping():
    kept = {"first_loss": 3.0, "last_loss": 1.0, "steps": 6, "best_step": 2, "stopped_early": True,
            "eval_loss": 0.5, "metrics": {"json_match": 0.75}}
    state = _fold(STARTED, ("step", {"step": 1, "epoch": 0, "loss": 3.0, "lr": 0.1, "tokens_per_s": 50.0}),
                  ("eval", {"step": 2, "eval_loss": 0.5, "metrics": {"json_match": 0.75},
                            "samples": [{"p": 1}]}),
                  ("log", {"level": "warning", "message": "slow"}),
                  ("step", {"step": 6, "epoch": 0, "loss": float("nan"), "lr": 0.1}),
                  ("eval", {"step": 6, "eval_loss": 0.9, "metrics": {"json_match": 0.25}}),
                  ("finished", {"adapter_path": "/a", "summary": kept}))
    assert (state.status, state.step, state.total_steps, state.adapter_path) == ("finished", 6, 10, "/a")
    assert state.losses == [3.0] and state.first_loss == state.last_loss == 3.0  # NaN is no loss
    assert (state.best_step, state.eval_loss, state.metrics) == (2, 0.5, {"json_match": 0.75})
    assert state.warnings == ["slow"] and state.samples == [{"p": 1}] and state.eta_s == 0.0
    assert state.finished == FinishedSummary.from_dict(kept) and state.finished.to_dict()["best_step"] == 2
    assert state.message == "stopped early at step 6; the adapter is the best evaluated one, from step 2"
    assert (state.started, state.ended) == (101.0, 107.0) and state.last_terminal


def test_a_resume_clears_what_the_earlier_end_reported():
    state = _fold(STARTED, ("failed", {"error": "Killed", "message": "oom"}),
                  ("started", {**STARTED[1], "resumed_step": 4}))
    assert (state.status, state.error, state.ended, state.step) == ("running", None, None, 4)
    assert state.message == "m on cpu (fp32)"


def test_lost_and_settled_are_decided_by_the_fold_given_liveness():
    running = _fold(STARTED)
    assert running.status_given(False) == "lost" and running.status_given(None) == "running"
    assert running.settled(False) and not running.settled(None) and not running.settled(True)
    ended = _fold(STARTED, ("cancelled", {}))
    assert ended.status_given(False) == "cancelled" and ended.settled(None) and not ended.settled(True)
    running.mark_worker_gone()
    assert running.status == "lost" and "without a final event" in running.message
    assert running.summary(None).status == "lost"


def test_cost_is_the_recorded_rate_times_the_time_run(tmp_path):
    state = _fold(STARTED)
    assert state.cost_usd() is None  # nothing billed
    state.usd_per_hour = 3.6
    assert state.cost_usd(now=201.0) == pytest.approx(0.1)  # 100 s since the first event at 101
    state.apply(Event("finished", "r", 2, 131.0, {"adapter_path": "/a"}))
    assert state.cost_usd(now=10_000.0) == pytest.approx(0.03)
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig(backend="modal", gpu="H100"), usd_per_hour=3.6)
    writer = EventWriter(store.events_path(run_id), run_id)
    writer.emit("started", model="m", device="cuda", total_steps=1)
    writer.emit("finished", adapter_path="/a")
    summary = store.summary(run_id)
    seconds = summary.ended - summary.started
    assert store.rate(run_id) == 3.6 and summary.cost_usd == pytest.approx(3.6 * seconds / 3600)
    assert store.rate(store.create(RunConfig())) is None


def test_follow_and_watch_end_when_the_worker_is_gone_or_the_stream_ended(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)
    writer.emit("started", model="m", device="cpu", total_steps=2)
    writer.emit("step", step=1, epoch=0, loss=1.0, lr=0.1)
    assert [e.seq for e in store.follow(run_id, poll_s=0.01, worker_alive=lambda: False)] == [1, 2]
    assert [e.seq for e in store.follow(run_id, since_seq=1, poll_s=0.01, worker_alive=lambda: False)] == [2]
    states = list(store.watch(run_id, poll_s=0.01, worker_alive=lambda: False))
    assert len(states) == 1 and states[0].step == 1 and states[0].status_given(False) == "lost"
    writer.emit("finished", adapter_path="/a", summary={"first_loss": 1.0, "last_loss": 1.0, "steps": 1})
    assert [e.type for e in store.follow(run_id, since_seq=2, poll_s=0.01)] == ["finished"]
    state = store.state(run_id)
    assert state.status == "finished" and state.finished is not None and state.finished.steps == 1


def test_the_fold_adds_up_the_judges_usage_over_evaluations():
    state = RunState()
    state.apply(Event("eval", "r", 1, 1.0, {"step": 0, "metrics": {"judge": 0.5}}))
    assert state.judge == {} and state.summary().judge == {}  # no judge: nothing shown
    spent = {"calls": 12, "failures": 1, "cached": 0, "input_tokens": 1500, "output_tokens": 100,
             "cost_usd": 0.001}
    state.apply(Event("eval", "r", 2, 2.0, {"step": 0, "judge": spent}))
    state.apply(Event("eval", "r", 3, 3.0, {"step": 2, "judge": {**spent, "failures": 0, "cached": 2}}))
    assert state.judge == {"calls": 24, "failures": 1, "cached": 2, "input_tokens": 3000,
                           "output_tokens": 200, "cost_usd": pytest.approx(0.002)}
    summary = state.summary()
    assert summary.judge == state.judge and summary.to_dict()["judge"]["calls"] == 24
    assert "judge: 24 calls (1 failed, 2 cached) · 3.2k tokens · $0.0020" in summary.describe()
    assert "24 calls" in summary._repr_html_()


def test_a_judge_without_prices_has_an_unknown_cost():
    state = RunState()
    state.apply(Event("eval", "r", 1, 1.0, {"step": 0, "judge": {"calls": 3, "input_tokens": 30,
                                                                 "output_tokens": 9, "cost_usd": None}}))
    assert state.judge["calls"] == 3 and state.judge["cost_usd"] is None
    assert state.summary().describe().endswith("judge: 3 calls · 39 tokens · cost unknown (no prices)")

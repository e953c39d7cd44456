"""The dashboard through its widget state: what a browser would receive."""

import base64
import json
import re

from nbfinetune.config import RunConfig
from nbfinetune.events import Event
from nbfinetune.runs import EventWriter, RunStore
from nbfinetune.widgets.charts import Curves
from nbfinetune.run_state import RunState
from nbfinetune.widgets.dashboard import Dashboard


class FakeBackend:
    def __init__(self, alive=True):
        self.alive = alive
        self.cancelled = []

    def is_alive(self, run_id, store):
        return self.alive

    def cancel(self, run_id, store, hard=False):
        self.cancelled.append(run_id)


class FakeRun:
    def __init__(self, store, run_id, backend):
        self.store, self.id, self.backend = store, run_id, backend

    def cancel(self):
        self.backend.cancel(self.id, self.store)


def _run(tmp_path, steps=50, finish=True, alive=False):
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)
    writer.emit("started", model="m", device="cpu", total_steps=steps)
    writer.emit("eval", step=0, eval_loss=3.0, metrics={"json_match": 0.0}, base_metrics={"json_match": 0.0},
                samples=[{"prompt": "p<b>", "reference": "r", "base": "b", "current": "c"}])
    for step in range(1, steps + 1):
        writer.emit("step", step=step, epoch=step / steps, loss=3.0 / step, lr=1e-3, tokens_per_s=100.0, eta_s=1.0)
    if finish:
        writer.emit("eval", step=steps, eval_loss=0.5, metrics={"json_match": 0.9})
        writer.emit("finished", adapter_path="/tmp/adapter")
    return FakeRun(store, run_id, FakeBackend(alive)), writer


def test_replaying_a_finished_run_draws_everything_at_once(tmp_path):
    run, _ = _run(tmp_path)
    dash = Dashboard(run, start=False)
    raw, smooth, evaluation, lr = dash.figure.data
    assert list(raw.x) == list(range(1, 51)) and raw.y[-1] == 3.0 / 50
    assert list(evaluation.x) == [0, 50] and list(evaluation.y) == [3.0, 0.5]
    assert smooth.y[0] == 3.0 and smooth.y[-1] > raw.y[-1]  # smoothing lags a falling curve
    assert dash.progress.value == dash.progress.max == 50
    assert "finished" in dash.status_html.value and "/tmp/adapter" in dash.metrics_html.value
    assert "0.900" in dash.metrics_html.value and "0.000" in dash.metrics_html.value
    assert "p&lt;b&gt;" in dash.samples_html.value  # escaped
    assert dash.cancel_button.layout.display == "none"


def _widget_states(widget) -> list[dict]:
    """The state of every widget in a tree: what a (re)loading browser gets, and what a notebook saves."""
    states = [widget.get_state()]
    for child in getattr(widget, "children", ()):
        states += _widget_states(child)
    return states


def _state_text(widget) -> str:
    return json.dumps(_widget_states(widget), default=str)


def test_live_updates_are_batched_into_few_widget_messages(tmp_path):
    run, writer = _run(tmp_path, steps=5, finish=False, alive=True)
    dash = Dashboard(run, start=False)
    sent = []
    dash.chart.send_state = lambda *a, **k: sent.append(a)  # the comm seam ipywidgets uses
    for step in range(6, 506):
        writer.emit("step", step=step, epoch=1, loss=1.0 / step, lr=1e-3)
    assert dash.poll()
    dash.redraw()
    assert len(dash.figure.data[0].x) == 505
    assert len(sent) <= 2, f"{len(sent)} update messages for one redraw"


def test_a_reloaded_page_gets_the_whole_chart_from_the_widget_state(tmp_path):
    """A browser reload re-requests every widget's state from the kernel: the curves must be in it."""
    run, writer = _run(tmp_path, steps=5, finish=False, alive=True)
    dash = Dashboard(run, start=False)
    for step in range(6, 31):
        writer.emit("step", step=step, epoch=1, loss=0.123456 + step, lr=1e-3)
    dash.poll()
    dash.redraw()
    state = _state_text(dash)
    assert "30.123456" in state  # the newest point, drawn after the widget was first displayed
    plotly = json.loads(state)  # and as a figure Lab draws: plotly JSON with every step
    figures = [o["data"]["application/vnd.plotly.v1+json"] for s in plotly for o in s.get("outputs", [])
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) == 1 and len(figures[0]["data"][0]["x"]) == 30


def test_the_saved_widget_state_is_small(tmp_path):
    """A notebook saves every widget's state: no 5 MB plotly bundle per dashboard."""
    run, _ = _run(tmp_path, steps=200)
    dash = Dashboard(run, start=False)
    assert len(_state_text(dash)) < 200_000


def test_a_failed_run_without_steps_shows_no_empty_chart(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig())
    EventWriter(store.events_path(run_id), run_id).emit("failed", error="DataError", message="no rows")
    dash = Dashboard(FakeRun(store, run_id, FakeBackend(False)), start=False)
    assert dash.chart.layout.display == "none"
    assert "no rows" in dash.status_html.value
    assert "<img" not in dash.mimebundle()["text/html"]


def test_header_names_the_run_and_says_its_status_once(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig(name="people-v1"))
    writer = EventWriter(store.events_path(run_id), run_id)
    writer.emit("started", model="m", device="cpu", total_steps=1)
    writer.emit("step", step=1, epoch=1, loss=1.0, lr=1e-3)
    writer.emit("finished", adapter_path="/a")
    dash = Dashboard(FakeRun(store, run_id, FakeBackend(False)), start=False)
    text = re.sub("<[^>]+>", " ", dash.status_html.value)
    assert "people-v1" in text and text.count("finished") == 1, text


def test_the_saved_snapshot_draws_the_chart_without_javascript(tmp_path):
    run, _ = _run(tmp_path)
    static = Dashboard(run, start=False).mimebundle()["text/html"]
    assert "<script" not in static and "cdn.plot.ly" not in static
    svg = base64.b64decode(re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", static).group(1)).decode()
    assert svg.count("<path") >= 3  # train, smoothed, eval


def test_cancel_button_cancels_the_run(tmp_path):
    run, _ = _run(tmp_path, steps=3, finish=False, alive=True)
    dash = Dashboard(run, start=False)
    dash.cancel_button.click()
    assert run.backend.cancelled == [run.id] and dash.cancel_button.disabled


def test_follow_thread_stops_at_the_terminal_event(tmp_path):
    run, writer = _run(tmp_path, steps=3, finish=False, alive=True)
    dash = Dashboard(run)
    writer.emit("failed", error="RuntimeError", message="boom")
    dash._thread.join(5)
    assert not dash._thread.is_alive() and dash.view.status == "failed" and "boom" in dash.status_html.value


def test_run_view_and_curves_handle_resumed_steps():
    view = RunState(curves=Curves())
    for seq, step in enumerate([1, 2, 3, 2, 3, 4], start=1):
        view.apply(Event("step", "r", seq, 0.0, {"step": step, "epoch": 0, "loss": float(step), "lr": 0.1}))
    assert view.curves.steps == [1, 2, 3, 4] and view.step == 4
    assert Curves.from_events([]).steps == []


def test_modal_runs_show_gpu_cost(tmp_path):
    store = RunStore(tmp_path)
    from nbfinetune.backends.modal_backend import ModalBackend

    config = RunConfig(backend="modal", gpu="H100")  # the rate is recorded at launch, as the backend does
    run_id = store.create(config, usd_per_hour=ModalBackend(client=object()).usd_per_hour(config))
    writer = EventWriter(store.events_path(run_id), run_id)
    writer.emit("started", model="m", device="cuda", total_steps=3)
    writer.emit("finished", adapter_path="/runs/x/adapter")
    dash = Dashboard(FakeRun(store, run_id, FakeBackend(False)), start=False)
    assert "$0.0000 on H100" in dash.stats_html.value


def test_an_early_stopped_run_stars_the_kept_evaluation(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)
    writer.emit("started", model="m", device="cpu", total_steps=12)
    for step, loss in ((2, 0.5), (4, 0.6), (6, 0.7)):
        writer.emit("step", step=step, epoch=0.1, loss=loss, lr=1e-3)
        writer.emit("eval", step=step, eval_loss=loss, metrics={"json_match": 1.0 - loss})
    writer.emit("finished", adapter_path="/a", summary={"steps": 6, "best_step": 2, "stopped_early": True,
                                                         "eval_loss": 0.5, "metrics": {"json_match": 0.5}})
    dash = Dashboard(FakeRun(store, run_id, FakeBackend(False)), start=False)
    evaluation = dash.figure.data[2]
    assert list(evaluation.marker.symbol) == ["star", "circle", "circle"]
    assert "stopped early at step 6" in dash.status_html.value and "from step 2" in dash.status_html.value
    # The kept adapter's json_match, not the last evaluation's.
    assert "0.500" in dash.metrics_html.value and "0.300" not in dash.metrics_html.value


def test_the_judges_calls_tokens_and_cost_are_shown(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)
    writer.emit("started", model="m", device="cpu", total_steps=4)
    for step in (0, 2, 4):
        writer.emit("eval", step=step, metrics={"judge": 0.6}, base_metrics={"judge": 0.4},
                    judge={"calls": 8, "failures": 0, "cached": 0, "input_tokens": 1000, "output_tokens": 40,
                           "cost_usd": 0.0007})
    writer.emit("finished", adapter_path="/a")
    dash = Dashboard(FakeRun(store, run_id, FakeBackend(False)), start=False)
    assert "judge: 24 calls · 3.1k tokens · $0.0021" in dash.metrics_html.value
    assert "judge: 24 calls" in dash.mimebundle()["text/html"]  # the saved snapshot too


def test_wait_adds_no_progress_bar_under_a_shown_dashboard(tmp_path, capsys):
    """`%finetune resume` shows a new dashboard from another Run object; `run.wait()` must not add a bar."""
    from nbfinetune import api

    fake, _ = _run(tmp_path, steps=3)
    shown = api.Run(fake.id, fake.store, FakeBackend(False))
    shown.dashboard()
    capsys.readouterr()
    api.Run(fake.id, fake.store, FakeBackend(False)).wait(timeout=10)
    err = capsys.readouterr().err
    assert "step/s" not in err and "3/3" not in err, err


def test_dpo_figures_are_drawn_beside_the_loss():
    from nbfinetune.widgets.charts import curves_figure

    events = [Event("step", "r", 1, 0.0, {"step": 1, "epoch": 0, "loss": 0.69, "lr": 0.1, "reward_margin": 0.0,
                                           "reward_accuracy": 0.0}),
              Event("step", "r", 2, 0.0, {"step": 2, "epoch": 0, "loss": 0.5, "lr": 0.1, "reward_margin": 0.4,
                                           "reward_accuracy": 0.75}),
              Event("eval", "r", 3, 0.0, {"step": 2, "eval_loss": 0.55, "eval_reward_margin": 0.3})]
    traces = {t.name: t for t in curves_figure(events).data}
    assert list(traces["reward margin"].y) == [0.0, 0.4] and list(traces["reward accuracy"].x) == [1, 2]
    assert list(traces["eval reward margin"].y) == [0.3] and list(traces["eval loss"].y) == [0.55]
    assert "KL to base" not in traces  # only what the run reports

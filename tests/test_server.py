"""The server extension's REST API with pytest-jupyter: auth, id validation, listing a real run."""

import json

import pytest
import tornado.httpclient

from nbfinetune import api
from nbfinetune.config import RunConfig
from nbfinetune.runs import EventWriter, RunStore

@pytest.fixture
def jp_server_config(home):
    return {"ServerApp": {"jpserver_extensions": {"nbfinetune": True}},
            "IdentityProvider": {"token": "secret-token"}}


@pytest.fixture
def finished_run(home):
    """A finished three-step run with evaluations, as stored events (no training)."""
    from tests.helpers import synthetic_run

    store = RunStore()
    run_id = synthetic_run(store, RunConfig.from_dict({"train": {"max_steps": 3}}), steps=3, evals=(0, 3))
    return api.Run(run_id, store)


async def test_list_and_details_of_a_finished_run(jp_fetch, finished_run):
    reply = await jp_fetch("nbfinetune", "api", "runs")
    runs = json.loads(reply.body)["runs"]
    assert [r["run_id"] for r in runs] == [finished_run.id]
    run = runs[0]
    assert (run["status"], run["step"], run["total_steps"]) == ("finished", 3, 3)
    assert run["last_loss"] > 0 and run["adapter_path"].endswith("adapter") and "json_match" in run["metrics"]
    details = json.loads((await jp_fetch("nbfinetune", "api", "runs", finished_run.id)).body)
    assert details["config"]["train"]["max_steps"] == 3


async def test_events_are_paged(jp_fetch, home):
    store = RunStore()
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)
    for step in range(1, 8):
        writer.emit("step", step=step, epoch=0, loss=1.0, lr=0.1)
    first = json.loads((await jp_fetch("nbfinetune", "api", "runs", run_id, "events",
                                       params={"since": 0, "limit": 5})).body)
    assert [e["seq"] for e in first["events"]] == [1, 2, 3, 4, 5] and first["more"] is True
    rest = json.loads((await jp_fetch("nbfinetune", "api", "runs", run_id, "events",
                                      params={"since": first["next_since"]})).body)
    assert [e["seq"] for e in rest["events"]] == [6, 7] and rest["more"] is False


@pytest.mark.parametrize("path, code", [
    (("runs", "no-such-run"), 404),
    (("runs", "no-such-run", "events"), 404),
    (("runs", "bad%20id"), 400),
    (("runs", "..%2F..%2Fetc"), 400),
])
async def test_bad_and_unknown_ids(jp_fetch, home, path, code):
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await jp_fetch("nbfinetune", "api", *path)
    assert info.value.code == code


async def test_every_endpoint_requires_auth(jp_fetch, jp_base_url, jp_http_port, home):
    store = RunStore()
    run_id = store.create(RunConfig())
    client = tornado.httpclient.AsyncHTTPClient()
    for path, method in ((f"runs", "GET"), (f"runs/{run_id}", "GET"), (f"runs/{run_id}/events", "GET"),
                         (f"runs/{run_id}/cancel", "POST")):
        url = f"http://localhost:{jp_http_port}{jp_base_url}nbfinetune/api/{path}"
        with pytest.raises(tornado.httpclient.HTTPClientError) as info:
            await client.fetch(url, method=method, body="{}" if method == "POST" else None)
        assert info.value.code == 403, path


@pytest.mark.train
async def test_cancel_a_live_run(jp_fetch, home, tiny_model):
    import time

    run = api.finetune(model=tiny_model, steps=100000, eval_samples=0, display=False)
    deadline = time.monotonic() + 60
    while not any(e.type == "step" for e in run.events()) and time.monotonic() < deadline:
        time.sleep(0.1)
    reply = await jp_fetch("nbfinetune", "api", "runs", run.id, "cancel", method="POST", body="{}")
    assert json.loads(reply.body)["cancelling"] is True
    assert run.wait(timeout=60, progress=False).status == "cancelled"


async def test_damaged_runs_do_not_break_the_listing_or_the_sidebar(jp_fetch, home):
    from tests.damaged import make_damaged_runs

    made = make_damaged_runs(RunStore())
    runs = {r["run_id"]: r for r in json.loads((await jp_fetch("nbfinetune", "api", "runs")).body)["runs"]}
    assert len(runs) == len(made)
    assert runs[made["empty-config"]]["status"] == "damaged" and "config.json" in runs[made["empty-config"]]["error"]
    # The sidebar calls last_loss.toFixed(): a loss is a number or null, never "NaN" or NaN.
    assert runs[made["loss-nan-text"]]["last_loss"] is None and runs[made["loss-nan"]]["last_loss"] is None
    details = json.loads((await jp_fetch("nbfinetune", "api", "runs", made["list-config"])).body)
    assert details["run"]["status"] == "damaged" and details["config"] is None
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await jp_fetch("nbfinetune", "api", "runs", made["empty-config"], "cancel", method="POST", body="{}")
    assert info.value.code == 409
    page = json.loads((await jp_fetch("nbfinetune", "api", "runs", made["loss-nan"], "events")).body)
    assert page["events"][-1]["loss"] is None  # JSON.parse rejects NaN


@pytest.mark.parametrize("body", ["[]", "null", "7", '"hard"', "\xff"])
async def test_cancel_with_a_body_that_is_not_an_object_is_a_bad_request(jp_fetch, home, body):
    run_id = RunStore().create(RunConfig())
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await jp_fetch("nbfinetune", "api", "runs", run_id, "cancel", method="POST", body=body)
    assert info.value.code == 400


async def test_an_events_page_parses_only_that_page(jp_fetch, home, monkeypatch):
    from nbfinetune.events import Event

    store = RunStore()
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)
    for step in range(1, 3001):
        writer.emit("step", step=step, epoch=0, loss=1.0, lr=0.1)
    writer.close()
    await jp_fetch("nbfinetune", "api", "runs", run_id, "events", params={"since": 0, "limit": 10})
    parsed = []
    real = Event.from_dict.__func__
    monkeypatch.setattr(Event, "from_dict", classmethod(lambda cls, obj: parsed.append(1) or real(cls, obj)))
    page = json.loads((await jp_fetch("nbfinetune", "api", "runs", run_id, "events",
                                      params={"since": 2900, "limit": 20})).body)
    assert [e["seq"] for e in page["events"]] == list(range(2901, 2921)) and page["more"] is True
    assert len(parsed) <= 21
    last = json.loads((await jp_fetch("nbfinetune", "api", "runs", run_id, "events",
                                      params={"since": 2990, "limit": 20})).body)
    assert [e["seq"] for e in last["events"]] == list(range(2991, 3001)) and last["more"] is False


async def test_delete_a_run_but_not_while_it_runs(jp_fetch, home):
    from tests.helpers import live_worker

    store = RunStore()
    ended = store.create(RunConfig())
    EventWriter(store.events_path(ended), ended).emit("failed", error="E", message="m")
    reply = await jp_fetch("nbfinetune", "api", "runs", ended, method="DELETE")
    assert json.loads(reply.body) == {"run_id": ended, "deleted": True} and not store.exists(ended)

    running = store.create(RunConfig())
    EventWriter(store.events_path(running), running).emit("started", model="m", device="cpu", total_steps=9)
    worker = live_worker(store.path(running))
    try:
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await jp_fetch("nbfinetune", "api", "runs", running, method="DELETE")
        assert refused.value.code == 409 and store.exists(running)
    finally:
        worker.kill()
        worker.wait()


def test_jupyter_server_loads_the_extension_through_its_current_hook():
    """The extension point names nbfinetune.server_extension, whose `_load_jupyter_server_extension` is found
    without the DeprecationWarning the old `load_jupyter_server_extension` name gets."""
    import warnings

    from jupyter_server.extension.manager import ExtensionPackage

    from nbfinetune import server_extension as server

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        package = ExtensionPackage(name="nbfinetune", enabled=True)
        (point,) = package.extension_points.values()
        assert point.module is server
        assert point._get_loader() is server._load_jupyter_server_extension
    assert not hasattr(server, "load_jupyter_server_extension")

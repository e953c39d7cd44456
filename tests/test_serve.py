"""The OpenAI-compatible API, driven by the real `openai` client against a local server that serves two
trained adapters and their base model at once (tiny model)."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import openai
import pytest

from nbfinetune import api
from nbfinetune.core.trainer import train
from nbfinetune.runs import EventWriter, RunStore
from nbfinetune.serving import ChatModel

from tests.helpers import tiny_config

# The train tier: the server serves two adapters trained here.
pytestmark = pytest.mark.train

QUESTION = [{"role": "user", "content": "Extract: Ada, 36, Turin"}]


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("serve-home"))
    for lr in (5e-2, 2e-2):  # two visibly different adapters
        config = tiny_config(tiny_model, max_steps=4, lr=lr)
        run_id = store.create(config)
        writer = EventWriter(store.events_path(run_id), run_id)
        train(config, writer.emit, lambda: False, store.path(run_id))
        writer.close()
    return store


@pytest.fixture(scope="module")
def server(store):
    with api.serve(store.ids(), store=store, quiet=True) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)


def _answer(client, model, max_tokens=12, **options):
    reply = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=max_tokens,
                                           **options)
    return reply.choices[0]


def test_models_are_the_base_and_each_run(client, server, store, tiny_model):
    assert [m.id for m in client.models.list()] == [tiny_model, *store.ids()]


def test_greedy_answers_equal_the_notebook_chat(client, store, tiny_model):
    answers = {}
    for run_id in store.ids():
        chat = ChatModel(tiny_model, api.Run(run_id, store).adapter_path)
        expected = "".join(chat.stream(QUESTION, max_new_tokens=12))
        choice = _answer(client, run_id)
        assert choice.message.content == expected and choice.finish_reason == "length"
        answers[run_id] = expected
    base = "".join(chat.stream(QUESTION, max_new_tokens=12, adapter="base"))
    assert _answer(client, tiny_model).message.content == base
    assert len({base, *answers.values()}) == 3  # three different models really answered


def test_streaming_matches_the_whole_answer_and_reports_usage(client, store):
    run_id = store.ids()[0]
    stream = client.chat.completions.create(model=run_id, messages=QUESTION, temperature=0, max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _answer(client, run_id).message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens > 0


def test_async_clients_at_once_get_each_their_own_adapter(server, client, store, tiny_model):
    models = [tiny_model, *store.ids()] * 2
    expected = {m: _answer(client, m).message.content for m in set(models)}

    async def ask_all():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0) as aclient:
            async def ask(model, stream):
                if not stream:
                    reply = await aclient.chat.completions.create(model=model, messages=QUESTION, temperature=0,
                                                                  max_tokens=12)
                    return reply.choices[0].message.content
                chunks = await aclient.chat.completions.create(model=model, messages=QUESTION, temperature=0,
                                                               max_tokens=12, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

            return await asyncio.gather(*(ask(m, i % 2 == 0) for i, m in enumerate(models)))

    assert list(asyncio.run(ask_all())) == [expected[m] for m in models]


def test_one_batch_answers_different_adapters_per_row(server, store, tiny_model):
    """Requests that arrive while a batch runs join it, each row with its own adapter."""
    engine = server._engines[0]
    routes = {m: (r.engine, r.adapter) for m, r in server._routes.items()}
    from nbfinetune.serve.protocol import parse_chat_request

    def generation(model, max_tokens, done):
        text = []

        def sink(delta, finish):
            text.append(delta)
            if finish:
                done.set()

        request = parse_chat_request({"model": model, "messages": QUESTION, "temperature": 0,
                                      "max_tokens": max_tokens})
        return engine.prepare(request, routes[model][1], sink), text

    busy_done = threading.Event()
    busy, _ = generation(store.ids()[0], 400, busy_done)  # keeps the engine busy while the others queue
    engine.submit(busy)
    models = [tiny_model, *store.ids()]
    events = [threading.Event() for _ in models]
    pending = [generation(m, 12, e) for m, e in zip(models, events)]
    before = engine.batches
    engine.submit(*(g for g, _ in pending))
    assert all(e.wait(120) for e in events) and busy_done.wait(120)
    assert engine.batches - before == 1  # all three prefilled together, joining the running one
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    assert ["".join(text) for _, text in pending] == [_answer(client, m).message.content for m in models]


def test_run_ids_that_differ_only_in_punctuation_keep_their_own_adapters(client, store, tiny_model, tmp_path):
    """`a-b` and `a.b` clean to the same internal adapter name; each must still answer with its own adapter."""
    first, second = (api.Run(run_id, store).adapter_path for run_id in store.ids())
    lookalikes = RunStore(tmp_path)
    for run_id, adapter in (("same-name", first), ("same.name", second)):
        lookalikes.create(tiny_config(tiny_model), run_id=run_id)
        writer = EventWriter(lookalikes.events_path(run_id), run_id)
        writer.emit("started", model=tiny_model, device="cpu", total_steps=1)
        writer.emit("finished", adapter_path=adapter)
        writer.close()
    with api.serve(["same-name", "same.name"], store=lookalikes, quiet=True) as server:
        lookalike = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        answers = [_answer(lookalike, m).message.content for m in ("same-name", "same.name")]
    assert answers == [_answer(client, m).message.content for m in store.ids()]


def test_stop_strings_cut_the_answer(client, store):
    run_id = store.ids()[0]
    full = _answer(client, run_id).message.content
    stop = full[3:5]
    cut = _answer(client, run_id, stop=[stop])
    assert cut.finish_reason == "stop" and cut.message.content == full[: full.index(stop)]
    streamed = client.chat.completions.create(model=run_id, messages=QUESTION, temperature=0, max_tokens=12,
                                              stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.message.content


def test_sampling_with_temperature_and_top_p(client, store):
    reply = client.chat.completions.create(model=store.ids()[1], messages=QUESTION, temperature=0.9, top_p=0.8,
                                           max_tokens=8, seed=1)
    assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens <= 8


def test_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=server.base_url, api_key="nbft-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        bad.models.list()
    assert raised.value.status_code == 401 and raised.value.code == "invalid_api_key"
    response = httpx.get(server.base_url + "/models")
    assert response.status_code == 401 and "error" in response.json()


@pytest.mark.parametrize("change, param", [
    ({"temperature": 5}, "temperature"), ({"top_p": "high"}, "top_p"), ({"n": 2}, "n"),
    ({"max_tokens": 0}, "max_tokens"), ({"stop": [1]}, "stop"), ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
])
def test_bad_requests_are_400_naming_the_field(server, store, change, param):
    body = {"model": store.ids()[0], "messages": QUESTION} | change
    response = httpx.post(server.base_url + "/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {server.api_key}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(param) and "Traceback" not in response.text


def test_unknown_model_too_long_and_not_json(client, server):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-run", messages=QUESTION)
    assert raised.value.code == "model_not_found" and "no-such-run" in raised.value.message
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=server.models[1], messages=QUESTION, max_tokens=10_000)
    assert raised.value.status_code == 413 and raised.value.body["param"] == "max_tokens"
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=server.models[1], messages=[{"role": "user", "content": "Ada " * 2000}])
    assert raised.value.status_code == 413 and raised.value.body["param"] == "messages"
    response = httpx.post(server.base_url + "/chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {server.api_key}"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = httpx.get(server.base_url + "/nowhere", headers={"Authorization": f"Bearer {server.api_key}"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_overloaded_is_503(store):
    with api.serve(store.ids()[:1], store=store, quiet=True, max_waiting=0) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(model=store.ids()[0], messages=QUESTION, max_tokens=4)
        assert raised.value.status_code == 503 and raised.value.code == "overloaded"


def test_the_key_is_shown_once_and_stored_only_as_a_hash(store, capsys):
    import hashlib

    with api.serve(store.ids()[:1], store=store) as server:
        shown = capsys.readouterr().out
    assert server.api_key in shown and server.api_key not in repr(server) and server.api_key not in server._repr_html_()
    run_dir = store.path(store.ids()[0])
    sessions = json.loads((run_dir / "serving.json").read_text())["sessions"]
    assert sessions[-1]["token_sha256"] == hashlib.sha256(server.api_key.encode()).hexdigest()
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".log", ".txt"):
            assert server.api_key not in path.read_text(errors="replace"), path


def test_a_given_key_is_used_and_not_printed(store, capsys):
    with api.serve(store.ids()[:1], store=store, api_key="nbft-mine") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="nbft-mine", max_retries=0)
        assert [m.id for m in client.models.list()][1] == store.ids()[0]
    assert "nbft-mine" not in capsys.readouterr().out


def test_magic_and_cli_call_the_same_api(ip, monkeypatch):
    from nbfinetune import cli

    calls = []
    monkeypatch.setattr(api, "serve", lambda ids, backend="local", **options: calls.append((ids, backend, options)))
    ip.run_line_magic("finetune", "serve 20260101-000000-aaaaaa --port 9001 --backend local")
    monkeypatch.setenv("MY_KEY", "nbft-k")
    monkeypatch.setattr(cli, "_wait_for_interrupt", lambda: None)
    assert cli.main(["serve", "r1", "r2", "--port", "9002", "--api-key-env", "MY_KEY"]) == 0
    assert calls == [(["20260101-000000-aaaaaa"], "local", {"port": 9001}),
                     (["r1", "r2"], "local", {"host": "127.0.0.1", "port": 9002, "api_key": "nbft-k"})]


def test_chat_widget_and_chat_magic_answer_from_any_endpoint(server, store, tiny_model, ip, monkeypatch, capsys):
    from nbfinetune.widgets.chat import ChatWidget

    monkeypatch.setenv("NBFINETUNE_HOME", str(store.root.parent))
    monkeypatch.setenv("SERVED_KEY", server.api_key)
    run_id = store.ids()[0]
    served = api.endpoint(server.base_url, run_id, api_key_env="SERVED_KEY")
    provider = api.endpoint(server.base_url, tiny_model, api_key_env="SERVED_KEY")  # stands in for an API model
    assert server.api_key not in served.describe() and server.api_key not in repr(served)

    widget = api.chat(served, compare=[provider])
    widget.max_tokens.value = 16  # the slider's least
    widget.submit("Extract: Ada, 36, Turin", wait=True)
    (_, tuned), (who, other) = widget._turns[1:]
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
    assert tuned == _answer(client, run_id, 16).message.content
    assert who == provider.label and other == _answer(client, tiny_model, 16).message.content

    run_widget = api.Run(run_id, store).chat(compare=[provider])
    assert isinstance(run_widget, ChatWidget) and run_widget.compare_with.value == provider.label

    ip.run_line_magic("chat", f"--endpoint {server.base_url} --model {run_id} --key-env SERVED_KEY "
                              "--max-tokens 16 Extract: Ada, 36, Turin")
    assert tuned in capsys.readouterr().out

    monkeypatch.setenv("SERVED_KEY", "nbft-a-wrong-key-123")
    wrong = ChatWidget(served)
    wrong.submit("hi", wait=True)
    who, text = wrong._turns[-1]
    assert who == "error" and "401" in text and "nbft-a-wrong-key-123" not in wrong.transcript.value


def test_the_cli_serves_until_interrupted(store, tiny_model):
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the CLI must flush by itself
    env |= {"NBFINETUNE_HOME": str(store.root.parent), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "nbfinetune.cli", "serve", store.ids()[0], "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = re.search(r"at (http://\S+/v1)", process.stdout.readline()).group(1)
        key = re.search(r"(nbft-\S+)", process.stdout.readline()).group(1)
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == [tiny_model, store.ids()[0]]
        assert _answer(client, store.ids()[0]).finish_reason == "length"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        process.stdout.close()

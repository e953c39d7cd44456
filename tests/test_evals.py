"""nbft.evaluate / judge / economics against real seams: our own OpenAI-compatible server on the tiny
model as the "API model" and as a judge, the real openai client; a small http.server stand-in where a
test needs fixed replies (judgments to parse, rate limits, server errors) and a request count."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

import nbfinetune as nbft
from nbfinetune import api
from nbfinetune.core.trainer import train
from nbfinetune.evals.judge import parse_score, parse_winner
from nbfinetune.runs import EventWriter, RunStore

from tests.helpers import tiny_config

CASES = [{"messages": [{"role": "user", "content": f"Extract: person {i}"},
                       {"role": "assistant", "content": json.dumps({"name": f"P{i}", "age": 30 + i})}]}
         for i in range(4)]


class Stub:
    """An OpenAI-compatible chat endpoint answering by rule: reply(prompt) → text, or an int status."""

    def __init__(self, reply) -> None:
        self.reply, self.requests, self.lock = reply, [], threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with stub.lock:
                    stub.requests.append(prompt)
                    count = len([p for p in stub.requests if p == prompt])
                answer = stub.reply(prompt, count)
                if isinstance(answer, int):
                    payload, status = {"error": {"message": "busy", "type": "rate_limit"}}, answer
                else:
                    status = 200
                    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": answer}}],
                               "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(answer.split()),
                                         "total_tokens": 0}}
                data = json.dumps(payload).encode()
                try:
                    self._send(status, data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("retry-after-ms", "10")  # the openai client's back-off honours it: fast tests
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def stub_key(monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-stub-secret")
    return "STUB_KEY"


def echo_reference(prompt: str, count: int):
    i = int(re.search(r"person (\d)", prompt).group(1))
    return json.dumps({"name": f"P{i}", "age": 30 + i}) if i % 2 == 0 else "not json"


def test_endpoint_evaluate_scores_tokens_cost_and_cache(home, stub_key):
    stub = Stub(echo_reference)
    try:
        model = nbft.endpoint(stub.url, "api-model", stub_key, prices=(1.0, 2.0))
        results = nbft.evaluate(CASES, models=[model], metrics=["json_match"], progress=False)
        frame = results.df
        assert len(frame) == 4 and frame["error"].isna().all()
        assert list(frame["json_match"]) == [1.0, 0.0, 1.0, 0.0]
        assert (frame["latency_s"] > 0).all() and (frame["input_tokens"] == 3).all()
        row = frame.iloc[1]
        assert row["cost_usd"] == pytest.approx((row["input_tokens"] * 1.0 + row["output_tokens"] * 2.0) / 1e6)
        assert results.summary().loc["api-model", "json_match"] == 0.5
        assert len(stub.requests) == 4

        again = nbft.evaluate(CASES, models=[model], metrics=["json_match"], progress=False)
        assert len(stub.requests) == 4  # every answer came from the cache
        assert list(again.df["output"]) == list(frame["output"])
        nbft.evaluate(CASES, models=[model], metrics=["json_match"], max_tokens=9, progress=False)
        assert len(stub.requests) == 8  # other settings, other answers
    finally:
        stub.close()
    assert "sk-stub-secret" not in "".join(p.read_text() for p in home.rglob("*.json"))


def test_rate_limits_are_retried_and_failures_recorded_per_example(home, stub_key):
    def flaky(prompt: str, count: int):
        if "person 1" in prompt:
            return 429 if count == 1 else "{}"  # rate limited once, then answers
        if "person 2" in prompt:
            return 500  # always fails
        return "{}"

    stub = Stub(flaky)
    try:
        model = nbft.endpoint(stub.url, "api-model", stub_key)
        results = nbft.evaluate(CASES, models=[model], metrics=["json_valid"], max_retries=2, progress=False)
    finally:
        stub.close()
    frame = results.df.set_index("example")
    assert frame.loc[1, "output"] == "{}" and frame.loc[1, "json_valid"] == 1.0
    assert "500" in frame.loc[2, "error"] and pd.isna(frame.loc[2, "json_valid"])
    assert frame.loc[[0, 1, 3], "error"].isna().all()
    assert results.summary().loc["api-model", "errors"] == 1
    assert sum("person 2" in p for p in stub.requests) == 3  # first try + 2 retries


def test_missing_key_is_one_error_per_row_not_a_crash(home, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    results = nbft.evaluate(CASES[:2], models=[nbft.endpoint("http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY")],
                            progress=False)
    assert all("NO_SUCH_KEY" in e for e in results.df["error"])


@pytest.mark.parametrize("reply,score,reason", [
    ('{"score": 7, "reason": "close"}', 0.7, "close"),
    ('Sure! ```json\n{"score": 10, "reason": "exact"}\n```', 1.0, "exact"),
    ("Score: 3/10. Missing the city.", 0.3, "Missing the city."),
    ("**Score:** 0 — wrong", 0.0, "wrong"),
])
def test_judge_score_parsing(reply, score, reason):
    assert parse_score(reply) == (pytest.approx(score), reason)


@pytest.mark.parametrize("reply, message", [
    ("I like it", "no score in the judge's reply: 'I like it'"),
    ('{"score": 12}', "the judge's score 12 is outside 0-10"),
    ('{"score": "high"}', "the judge's score is not a number: 'high'"),
])
def test_judge_score_parsing_refuses_nonsense(reply, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_score(reply)


def test_judge_winner_parsing():
    assert parse_winner('{"winner": "b", "reason": "shorter"}') == ("B", "shorter")
    assert parse_winner("Winner: A. It is right.")[0] == "A"
    assert parse_winner("winner: tie")[0] == "tie"
    with pytest.raises(ValueError, match="no winner in the judge's reply: 'both fine'"):
        parse_winner("both fine")


def _answers_judge(prompt: str, count: int) -> str:
    if "Answer to grade" in prompt:  # score mode: 9 for JSON, 2 otherwise
        answer = prompt.split("Answer to grade:\n", 1)[1].split("\n\nReply", 1)[0]
        return "Score: 9 valid json" if answer.startswith("{") else '{"score": 2, "reason": "not json"}'
    return "Winner: A"  # pairwise: a judge that always prefers the first answer it reads


def test_judge_in_evaluate_scores_counts_and_cancels_position_bias(home, stub_key):
    answers, judge_stub = Stub(echo_reference), Stub(_answers_judge)
    other = Stub(lambda prompt, count: "{}")
    try:
        judge_endpoint = nbft.endpoint(judge_stub.url, "judge-model", stub_key, prices=(1.0, 1.0))
        scorer = nbft.judge(judge_endpoint)
        pairwise = nbft.judge(judge_endpoint, mode="pairwise", name="win")
        models = [nbft.endpoint(answers.url, "a", stub_key), nbft.endpoint(other.url, "b", stub_key)]
        results = nbft.evaluate(CASES, models=models, metrics=["json_match", scorer, pairwise], progress=False)
    finally:
        for stub in (answers, judge_stub, other):
            stub.close()
    frame = results.df
    a = frame[frame["model"] == "a"]
    assert list(a["judge"]) == [0.9, 0.2, 0.9, 0.2] and a["judge_reason"].iloc[1] == "not json"
    b = frame[frame["model"] == "b"]
    assert (b["win"] == 0.5).all()  # "always A" judged both ways round is a tie, not a win
    assert a["win"].isna().all()  # the baseline is not compared with itself
    assert scorer.usage.calls == 8 and scorer.usage.failures == 0 and scorer.usage.input_tokens > 0
    assert pairwise.usage.calls == 8  # 4 examples × both orders
    assert scorer.usage.cost_usd == pytest.approx((scorer.usage.input_tokens + scorer.usage.output_tokens) / 1e6)
    assert "judge: 8 calls" in results.html()
    assert "a · judge" in results.svg() and "b · latency s" in results.svg()


def test_judge_prefers_the_better_answer_in_either_position(home, stub_key):
    def fair(prompt: str, count: int) -> str:
        a = prompt.split("Answer A:\n", 1)[1].split("\n\nAnswer B", 1)[0]
        return '{"winner": "A"}' if a == "good" else '{"winner": "B"}'

    judge_stub = Stub(fair)
    try:
        judge = nbft.judge(nbft.endpoint(judge_stub.url, "j", stub_key), mode="pairwise")
        assert judge.compare("q", "good", "bad", "ref").score == 1.0
        assert judge.compare("q", "bad", "good", "ref").score == 0.0
        prompts = judge_stub.requests[:2]
        assert prompts[0].index("good") < prompts[0].index("bad") and prompts[1].index("bad") < prompts[1].index("good")
    finally:
        judge_stub.close()


def test_judge_failures_are_recorded_and_counted(home, stub_key):
    judge_stub = Stub(lambda prompt, count: 503)
    answers = Stub(echo_reference)
    try:
        scorer = nbft.judge(nbft.endpoint(judge_stub.url, "j", stub_key))
        results = nbft.evaluate(CASES[:2], models=[nbft.endpoint(answers.url, "a", stub_key)],
                                metrics=[scorer], max_retries=0, progress=False)
    finally:
        judge_stub.close()
        answers.close()
    assert results.df["judge"].isna().all()
    assert all(r.startswith("judge failed") for r in results.df["judge_reason"])
    assert scorer.usage.failures == 2 and results.df["output"].notna().all()


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("evals-home"))
    config = tiny_config(tiny_model, max_steps=3, lr=5e-2)
    run_id = store.create(config)
    writer = EventWriter(store.events_path(run_id), run_id)
    train(config, writer.emit, lambda: False, store.path(run_id))
    writer.close()
    return store, run_id


@pytest.mark.train
def test_run_base_and_our_server_as_the_api_model(home, monkeypatch, trained, tiny_model):
    store, run_id = trained
    with api.serve([run_id], store=store, quiet=True) as server:  # the stand-in "API model": the base
        monkeypatch.setenv("LOCAL_KEY", server.api_key)
        endpoint = nbft.endpoint(server.base_url, tiny_model, "LOCAL_KEY", prices=(0.15, 0.6))
        judge = nbft.judge(nbft.endpoint(server.base_url, tiny_model, "LOCAL_KEY"))
        results = nbft.evaluate("sample:people", models=[endpoint, tiny_model, api.Run(run_id, store)],
                                metrics=["json_valid", judge], limit=2, max_tokens=6, store=store, progress=False)
    frame = results.df
    assert len(frame) == 6 and frame["error"].isna().all(), frame["error"].tolist()
    assert list(frame["kind"]) == ["endpoint"] * 2 + ["base"] * 2 + ["run"] * 2
    by = {kind: list(frame[frame["kind"] == kind]["output"]) for kind in ("endpoint", "base", "run")}
    assert by["endpoint"] == by["base"]  # greedy: the same base model through either path
    assert (frame["output_tokens"] > 0).all() and frame["cost_usd"].iloc[:2].notna().all()
    # The tiny model's replies are no judgments: each is recorded as a failed verdict, not a crash.
    assert judge.usage.calls == 6 and frame["judge_reason"].str.startswith("judge failed").all()

    def no_server(*args, **kwargs):
        raise AssertionError("cached: no model should be loaded")

    monkeypatch.setattr("nbfinetune.serve.local.serve_models", no_server)
    again = nbft.evaluate("sample:people", models=[tiny_model, api.Run(run_id, store)], metrics=["json_valid"],
                          limit=2, max_tokens=6, store=store, progress=False)
    assert list(again.df["output"]) == by["base"] + by["run"]

    import os

    weights = next(p for p in (store.path(run_id) / "adapter").iterdir() if p.suffix == ".safetensors")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # as a resume would
    with pytest.raises(AssertionError, match="cached: no model"):
        nbft.evaluate("sample:people", models=[api.Run(run_id, store)], metrics=["json_valid"], limit=2,
                      max_tokens=6, store=store, progress=False)
    monkeypatch.undo()

    economics = nbft.economics(results, requests_per_month=50_000, gpu="A10")
    table = economics.frame()
    assert table.loc[tiny_model, "monthly_usd"] > 0 and table.loc[run_id, "monthly_usd"] > 0
    api_cost = frame[frame["kind"] == "endpoint"]["cost_usd"].mean() * 50_000
    assert table.loc[results.targets[0].label, "monthly_usd"] == pytest.approx(api_cost)
    assert "prices of 2026" in economics.html() and "A10" in economics.html()
    assert "<path" in economics.svg() and "<rect" in results.svg()
    with pytest.raises(TypeError, match="unknown assumption 'gpus'"):
        nbft.economics(results, gpus="H100")


@pytest.mark.train
def test_judge_metric_during_training(home, monkeypatch, tiny_model, stub_key, tmp_path):
    judge_stub = Stub(lambda prompt, count: '{"score": 6, "reason": "ok"}')
    monkeypatch.setenv("NBFINETUNE_JUDGE_URL", judge_stub.url)
    monkeypatch.setenv("NBFINETUNE_JUDGE_MODEL", "judge")
    monkeypatch.setenv("NBFINETUNE_JUDGE_KEY_ENV", stub_key)
    events = []
    try:
        config = tiny_config(tiny_model, max_steps=2)
        config.eval.every = 2
        config.eval.metrics = ["json_valid", "judge"]
        config.eval.samples = 2
        train(config, lambda type_, **payload: events.append((type_, payload)), lambda: False, tmp_path / "run")
    finally:
        judge_stub.close()
    evals = [p for t, p in events if t == "eval"]
    assert evals and evals[-1]["metrics"]["judge"] == pytest.approx(0.6)
    assert judge_stub.requests
    # Each evaluation reports what it asked of the judge; together, every request the judge got.
    spent = [p["judge"] for p in evals]
    assert sum(s["calls"] for s in spent) == len(judge_stub.requests)
    assert all(s["input_tokens"] > 0 and s["cost_usd"] is None for s in spent if s["calls"])  # no prices set


def test_economics_break_even_and_scale_to_zero():
    from nbfinetune.evals.economics import Assumptions, serving_usd

    a = Assumptions(gpu="L4", concurrent_requests=1, idle_timeout_s=0, cold_start_s=0, active_hours_per_day=24)
    # Dense traffic: one GPU all month; sparse: only the seconds the requests take.
    assert serving_usd(10, 1.0, a) == pytest.approx(10 * 0.000222)
    busy = Assumptions(gpu="L4", concurrent_requests=1, idle_timeout_s=300, active_hours_per_day=24)
    assert serving_usd(1e6, 1.0, busy) == pytest.approx(30 * 86400 * 0.000222)


def test_endpoint_and_evaluate_are_package_functions():
    assert callable(nbft.endpoint) and callable(nbft.evaluate) and callable(nbft.judge) and callable(nbft.economics)


def test_timeouts_are_recorded_and_concurrency_is_limited(home, stub_key):
    import time

    in_flight, most = [0], [0]
    lock = threading.Lock()

    def slow(prompt: str, count: int):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(3.0 if "person 3" in prompt else 0.2)
        with lock:
            in_flight[0] -= 1
        return "{}"

    stub = Stub(slow)
    try:
        model = nbft.endpoint(stub.url, "api-model", stub_key)
        results = nbft.evaluate(CASES, models=[model], metrics=["json_valid"], concurrency=2, timeout_s=1.0,
                                max_retries=0, progress=False)
    finally:
        stub.close()
    frame = results.df.set_index("example")
    assert "Timeout" in frame.loc[3, "error"] and frame.loc[[0, 1, 2], "output"].tolist() == ["{}"] * 3
    assert most[0] <= 2


@pytest.mark.train
def test_judge_metric_in_a_local_run_with_early_stopping(home, monkeypatch, tiny_model, stub_key):
    """The worker process inherits the judge's settings; the score reaches the eval events, the summary
    and early stopping."""
    judge_stub = Stub(lambda prompt, count: "Score: 4 - partly right")
    for name, value in {"URL": judge_stub.url, "MODEL": "judge", "KEY_ENV": stub_key,
                        "USD_PER_M_INPUT": "1.0", "USD_PER_M_OUTPUT": "2.0"}.items():
        monkeypatch.setenv(f"NBFINETUNE_JUDGE_{name}", value)
    try:
        run = api.finetune(model=tiny_model, steps=4, eval_every=2, eval_samples=2, metrics=["judge"],
                           early_stopping=5, early_stopping_metric="judge", display=False)
        summary = run.wait(timeout=300, progress=False)
    finally:
        judge_stub.close()
    assert summary.status == "finished", summary
    scores = [e["metrics"]["judge"] for e in run.events() if e.type == "eval" and e.get("metrics")]
    assert scores and all(s == pytest.approx(0.4) for s in scores)
    assert summary.metrics["judge"] == pytest.approx(0.4)
    assert judge_stub.requests and "sk-stub-secret" not in (run.path / "events.jsonl").read_text()
    # The worker's judge usage reaches the events and the summary, priced from the inherited settings.
    assert summary.judge["calls"] == len(judge_stub.requests) and summary.judge["output_tokens"] > 0
    assert summary.judge["cost_usd"] == pytest.approx(
        (summary.judge["input_tokens"] * 1.0 + summary.judge["output_tokens"] * 2.0) / 1e6)
    assert "judge: " in summary.describe()


def test_economics_of_an_endpoint_without_prices_says_so(home, stub_key):
    stub = Stub(echo_reference)
    try:
        priced = nbft.endpoint(stub.url, "priced", stub_key, prices=(1.0, 2.0))
        unpriced = nbft.endpoint(stub.url, "unpriced", stub_key)
        results = nbft.evaluate(CASES, models=[unpriced, priced], metrics=["json_match"], progress=False)
    finally:
        stub.close()
    table = nbft.economics(results, requests_per_month=1000).frame()
    assert pd.isna(table.loc["unpriced", "monthly_usd"]) and "no prices" in table.loc["unpriced", "how"]
    assert table.loc["priced", "monthly_usd"] > 0 and "break-even vs priced (requests/month)" in table.columns


def test_the_training_judge_counts_its_calls_tokens_and_cost(home, monkeypatch, stub_key):
    """What the trainer reads around an evaluation (nbfinetune.metrics, no evals import in core): the
    judge metric's running totals, and the difference an evaluation made."""
    from nbfinetune.metrics import resolve_metric, usage_since, usage_totals

    judge_stub = Stub(lambda prompt, count:
                      "not a verdict" if "bad" in prompt else '{"score": 8, "reason": "ok"}')
    for name, value in {"URL": judge_stub.url, "MODEL": "judge", "KEY_ENV": stub_key,
                        "USD_PER_M_INPUT": "0.5", "USD_PER_M_OUTPUT": "1.5"}.items():
        monkeypatch.setenv(f"NBFINETUNE_JUDGE_{name}", value)
    try:
        assert usage_totals(["json_valid"]) == {}  # no counting metric: nothing to report
        before = usage_totals(["json_valid", "judge"])
        metric = resolve_metric("judge")
        assert metric('{"a": 1}', '{"a": 1}') == pytest.approx(0.8)
        assert metric("bad", '{"a": 1}') == 0.0  # no verdict: scores 0, counted as a failure
        assert metric('{"a": 1}', '{"a": 1}') == pytest.approx(0.8)  # asked before: from the cache
        spent = usage_since(before, usage_totals(["json_valid", "judge"]))
    finally:
        judge_stub.close()
    assert (spent["calls"], spent["failures"], spent["cached"]) == (2, 1, 1) and len(judge_stub.requests) == 2
    assert spent["input_tokens"] > 0 and spent["output_tokens"] > 0
    assert spent["cost_usd"] == pytest.approx(
        (spent["input_tokens"] * 0.5 + spent["output_tokens"] * 1.5) / 1e6)
    assert usage_since(usage_totals(["judge"]), usage_totals(["judge"])) == {}  # nothing asked: no payload


def test_the_judge_can_be_the_early_stopping_metric():
    from nbfinetune.config import ConfigError, RunConfig

    config = RunConfig.from_dict({"eval": {"every": 2, "early_stopping": 3, "early_stopping_metric": "judge",
                                           "metrics": ["json_match", "judge"], "samples": 4}})
    assert (config.eval.early_stopping_metric, config.eval.metrics) == ("judge", ["json_match", "judge"])
    with pytest.raises(ConfigError, match="'judge' is not among eval.metrics"):
        RunConfig.from_dict({"eval": {"every": 2, "early_stopping": 3, "early_stopping_metric": "judge",
                                      "metrics": ["json_match"]}})

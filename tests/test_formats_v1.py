"""LLaMA-Factory v1 chat rows (content parts with 'value', per-message loss_weight) and tool-call rows."""

from __future__ import annotations

import json
from pathlib import Path

from nbfinetune.config import DataSettings
from nbfinetune.data.prepare import prepare
from nbfinetune.data.render import trained_spans
from nbfinetune.data.validate import validate


def _part(text: str) -> list[dict[str, str]]:
    return [{"type": "text", "value": text}]


V1_ROW = {"messages": [
    {"role": "user", "content": _part("Say hi"), "loss_weight": 0.0},
    {"role": "assistant", "content": _part("OLDANSWER"), "loss_weight": 0.0},
    {"role": "user", "content": _part("Again"), "loss_weight": 0.0},
    {"role": "assistant", "content": _part("Hello"), "loss_weight": 1.0},
]}


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_v1_rows_are_usable_and_loss_weight_zero_turns_are_not_trained(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / "v1.jsonl", [V1_ROW] * 4)
    result = validate(path, tokenizer=tiny_tokenizer, max_seq_len=256)
    assert (result.report.format, result.report.valid, result.report.problem_count) == ("chat", 4, 0)
    trained = "".join(text for text, on in trained_spans(tiny_tokenizer, result.preview[0]) if on)
    assert "Hello" in trained and "OLDANSWER" not in trained
    data = prepare(DataSettings(path=path, eval_fraction=0.0), tiny_tokenizer)  # what the worker trains on
    assert "OLDANSWER" not in "".join(t for t, on in trained_spans(tiny_tokenizer, data.train[0]) if on)
    # Without loss_weight, every assistant turn is trained.
    plain = {"messages": [{k: v for k, v in m.items() if k != "loss_weight"} for m in V1_ROW["messages"]]}
    result = validate(_write(tmp_path / "plain.jsonl", [plain]), tokenizer=tiny_tokenizer, max_seq_len=256)
    assert "OLDANSWER" in "".join(t for t, on in trained_spans(tiny_tokenizer, result.preview[0]) if on)


def test_unsupported_shapes_say_what_was_found(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": _part("q")},
                      {"role": "assistant", "content": [{"type": "image_url", "value": "x.png"}]}]},
        {"messages": [{"role": "user", "content": _part("q")},
                      {"role": "assistant", "content": [{"kind": "text", "body": "a"}]}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss_weight": 0}]},
    ]
    problems = [p.message for p in validate(_write(tmp_path / "odd.jsonl", rows)).report.problems]
    assert problems == [
        "message 2: only image_url content parts; text parts are what can be trained (supported: type 'text' "
        "with 'text' or 'value')",
        "message 2: content parts must be objects like {'type': 'text', 'text': ...} (or 'value': ... as "
        "LLaMA-Factory writes them); found ['body', 'kind']",
        "every assistant turn has loss_weight 0: nothing to learn",
    ]


def test_dropped_tool_schemas_are_warned_once(tmp_path):
    tools = json.dumps([{"name": "get_weather", "parameters": {"type": "object"}}])
    row = {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "gpt", "value": "Sunny"}], "tools": tools}
    report = validate(_write(tmp_path / "tools.jsonl", [row] * 3)).report
    assert report.valid == 3
    assert [(p.row, p.severity) for p in report.problems] == [(1, "warning")]
    assert "'tools'" in report.problems[0].message and "dropped" in report.problems[0].message

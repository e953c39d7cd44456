import json

import pytest

from nbfinetune.data.formats import RowProblem, detect_format, normalize, split_for_generation
from nbfinetune.data.prepare import DataError, load_examples
from nbfinetune.data.sources import DataSourceError, iter_rows, sample_files

from tests.helpers import chat_row, write_jsonl

CASES = {
    "chat": {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": [{"type": "text", "text": "4"}]}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "tools": "[]"},
    "instruction": {"instruction": "Add", "input": "2+2", "output": "4"},
    "prompt_completion": {"prompt": "2+2?", "completion": "4"},
    "text": {"text": "Two plus two is four."},
}


@pytest.mark.parametrize("fmt", CASES)
def test_each_format_is_detected_and_normalized(fmt):
    record = CASES[fmt]
    assert detect_format([record]) == fmt
    example = normalize(record, fmt)
    if fmt == "text":
        assert example.text == record["text"]
    else:
        assert example.messages[-1] == {"role": "assistant", "content": "4"}
        prompt, reference = split_for_generation(example)
        assert reference == "4" and prompt[-1]["role"] == "user"


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "last assistant turn is empty"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "unknown role 'wizard'"),
    ({"messages": "hello"}, "field 'messages' must be a list"),
    ({"messages": [{"role": "user"}]}, "missing field 'content'"),
    ([1, 2], "expected a JSON object"),
])
def test_row_problems_are_plain_words(record, message):
    with pytest.raises(RowProblem, match=message):
        normalize(record, "chat")


def test_bad_rows_are_reported_by_line_number(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row(), "{broken", chat_row(answer=""), "", chat_row()])
    fmt, examples, report = load_examples(str(path))
    assert fmt == "chat" and [row for row, _, _ in examples] == [1, 5]
    assert [(p.row, p.message.split(" (")[0]) for p in report.problems] == \
        [(2, "invalid JSON"), (3, "the last assistant turn is empty")]


def test_undetectable_and_missing_files(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"could not detect the data format from fields \['answer', 'question'\]"):
        load_examples(str(path))
    with pytest.raises(DataSourceError, match="data file not found"):
        list(iter_rows(str(tmp_path / "missing.jsonl")))


def test_json_list_and_csv_sources(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([CASES["prompt_completion"]] * 3))
    assert [r.number for r in iter_rows(str(tmp_path / "d.json"))] == [1, 2, 3]
    (tmp_path / "d.csv").write_text("prompt,completion\nhi,there\nyo,ok\n")
    fmt, examples, _ = load_examples(str(tmp_path / "d.csv"))
    assert fmt == "prompt_completion" and len(examples) == 2


def test_sample_data_is_valid_and_json():
    train, evaluation = sample_files("people")
    for path in (train, evaluation):
        fmt, examples, report = load_examples(path)
        assert fmt == "chat" and not report.problems
        for _, example, _ in examples:
            assert set(json.loads(example.messages[-1]["content"])) == {"name", "age", "city"}

"""Dataset validation: every source, every problem class by row number, and fuzzing."""

import json
import string
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbfinetune.config import DataSettings
from nbfinetune.data.materialize import materialize
from nbfinetune.data.prepare import DataError, load_examples, prepare
from nbfinetune.data.validate import validate

from tests.helpers import chat_row, write_jsonl

GOOD = chat_row("Who is Ada?", "A mathematician.")


def _messages(validation):
    return {p.row: p.message for p in validation.report.problems}


def test_every_problem_class_is_reported_by_line(tmp_path, tiny_tokenizer):
    rows = [
        GOOD,                                                                  # 1 ok
        "{not json",                                                           # 2 invalid JSON
        {"messages": [{"role": "user", "content": "hi"}]},                     # 3 no assistant turn
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},  # 4 empty
        {"messages": [{"role": "robot", "content": "hi"}]},                    # 5 unknown role
        {"messages": 42},                                                      # 6 wrong type
        {"conversation": []},                                                  # 7 missing field
        chat_row("word " * 300, "ok"),                                         # 8 too long, nothing left
        chat_row("q", "word " * 300),                                          # 9 too long, truncated (kept)
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = validate(str(path), tokenizer=tiny_tokenizer, max_seq_len=64)
    report, messages = result.report, _messages(result)
    assert (report.format, report.rows, report.valid, report.truncated) == ("chat", 9, 2, 1)
    assert messages[2].startswith("invalid JSON")
    assert messages[3] == "no assistant turn: nothing to learn from"
    assert messages[4] == "the last assistant turn is empty"
    assert "unknown role 'robot'" in messages[5]
    assert messages[6] == "field 'messages' must be a list, got int"
    assert messages[7] == "missing field 'messages'"
    assert "longer than max_seq_len=64" in messages[8] and "dropped" in messages[8]
    assert "longer than max_seq_len=64: truncated" in messages[9]
    assert {p.row: p.severity for p in report.problems}[9] == "warning"
    assert report.tokens["max"] == 64 and 1 not in messages


def test_directory_sources_name_the_file(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [GOOD, GOOD])
    write_jsonl(folder / "b.jsonl", [GOOD, "{oops"])
    (folder / "notes.txt").write_text("ignored")
    result = validate(str(folder))
    assert (result.report.rows, result.report.valid) == (4, 3)
    assert str(result.report.problems[0]).startswith("train b.jsonl row 2: invalid JSON")


def test_column_mapping_for_odd_schemas(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "2+2?", "answer": "4"}] * 3)
    with pytest.raises(DataError, match="map your columns"):
        validate(str(path))
    result = validate(str(path), columns={"prompt": "question", "completion": "answer"})
    assert (result.report.format, result.report.valid) == ("prompt_completion", 3)


def test_strict_policy_refuses_bad_rows(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD] * 5 + ["{bad"])
    assert len(prepare(DataSettings(path=str(path)), tiny_tokenizer).train) == 4  # 5 good, 1 to eval split
    with pytest.raises(DataError, match=r"1 bad row\(s\) and on_bad_rows='strict' — train row 6: invalid JSON"):
        prepare(DataSettings(path=str(path), on_bad_rows="strict"), tiny_tokenizer)


def test_dataframes_and_datasets_become_files(home):
    import datasets
    import pandas as pd

    frame = pd.DataFrame([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}])
    train, evaluation = materialize(frame)
    assert evaluation is None and load_examples(train)[0] == "prompt_completion"
    assert materialize(frame)[0] == train  # content-addressed: the same data, the same file
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame),
                                   "test": datasets.Dataset.from_list([{"text": "hello"}])})
    train, evaluation = materialize(splits)
    assert load_examples(train)[2].rows == 2 and load_examples(evaluation)[0] == "text"
    assert materialize("x.jsonl", None) == ("x.jsonl", None)
    with pytest.raises(ValueError, match="must be a path"):
        materialize(42)


def test_parquet_source(tmp_path):
    import pandas as pd

    pd.DataFrame([{"instruction": "Add", "input": "2+2", "output": "4"}] * 2).to_parquet(tmp_path / "d.parquet")
    assert validate(str(tmp_path / "d.parquet")).report.format == "instruction"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nbfinetune.cli", "validate", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_json_and_exit_codes(tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, "{bad", GOOD])
    out = _cli(str(path), "--model", tiny_model, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"format", "rows", "valid", "problems", "tokens"} <= set(result)
    assert (result["format"], result["rows"], result["valid"]) == ("chat", 3, 2)
    assert result["problems"][0]["row"] == 2 and result["tokens"]["total"] > 0
    assert _cli(str(path), "--model", "none", "--strict").returncode == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{bad", "also bad"])
    out = _cli(str(bad), "--model", "none", "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["valid"] == 0 and "Traceback" not in out.stderr
    out = _cli(str(tmp_path / "missing.jsonl"), "--model", "none", "--json")
    assert out.returncode == 2 and "data file not found" in json.loads(out.stdout)["error"]


# --- fuzzing: random and mangled rows never crash the loader, and every bad row is reported ----
_text = st.text(alphabet=string.ascii_letters + " {}[]\":,\\\n", max_size=12)
_json_values = st.recursive(st.none() | st.booleans() | st.integers() | _text,
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                            max_leaves=8)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot", 3]),
                                  "content": st.one_of(_text, st.none(), st.integers(),
                                                       st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                                       "text": _text})))})
_row = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(_message, max_size=4)}),
    st.fixed_dictionaries({"messages": _json_values}),
    st.dictionaries(st.sampled_from(["prompt", "completion", "text", "instruction", "output", "x"]), _json_values),
    _json_values,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(_row.map(json.dumps), _text.filter(lambda t: t.strip() and "\n" not in t)),
                     min_size=1, max_size=12))
def test_fuzzed_files_never_crash_and_bad_rows_are_numbered(tmp_path_factory, tiny_tokenizer, rows):
    path = tmp_path_factory.mktemp("fuzz") / "d.jsonl"
    path.write_text("".join(r.replace("\n", " ") + "\n" for r in rows), encoding="utf-8")
    for fmt in ("auto", "chat", "text"):
        try:
            result = validate(str(path), fmt=fmt, tokenizer=tiny_tokenizer, max_seq_len=48)
        except DataError as exc:
            # Said once for the file: no row has the fields, or no format fits.
            assert "could not detect the data format" in str(exc) or "needs the field(s)" in str(exc)
            continue
        report = result.report
        errors = {p.row for p in report.problems if p.severity == "error"}
        assert report.rows == len(rows)
        assert report.valid + len(errors) == report.rows
        assert errors <= set(range(1, len(rows) + 1))

"""Every input gets row-numbered problems and an exit code 0/1/2 — never a traceback — in time linear in
its size; training reads the same files the same way."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from nbfinetune import fuzzdata
from nbfinetune.cli import main
from nbfinetune.config import DataSettings
from nbfinetune.data.prepare import DataError, prepare
from nbfinetune.data.validate import validate

GOOD_LINE = fuzzdata.GOOD_LINE


def test_validator_never_prints_a_traceback(tmp_path, capsys):
    for name, (path, code) in fuzzdata.malformed_files(tmp_path).items():
        exit_code = main(["validate", str(path), "--model", "none", "--json"])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.out + captured.err, name
        result = json.loads(captured.out)  # --json output stays JSON
        assert exit_code == code, (name, result)
        if code != 2:
            assert all(isinstance(p["row"], int) for p in result["problems"]), name


def test_problems_are_numbered_and_reported_the_way_training_reads_them(tmp_path, tiny_tokenizer):
    files = fuzzdata.malformed_files(tmp_path)
    expected = {
        "deep.jsonl": {1: "JSON nested too deeply"},
        "bigint.jsonl": {2: "invalid JSON (Exceeds the limit (4300 digits)"},
        "bom.jsonl": {},
        "latin1.jsonl": {2: "not valid Unicode"},
        "quote.csv": {2: "unreadable CSV"},
        "extra.csv": {2: "3 fields, but the header has 2"},
        "latin1.csv": {2: "not valid Unicode"},
        "bom.csv": {},
    }
    for name, problems in expected.items():
        report = validate(str(files[name][0]), tokenizer=tiny_tokenizer).report
        found = {p.row: p.message for p in report.problems}
        assert set(found) == set(problems), (name, found)
        for row, start in problems.items():
            assert start in found[row], (name, found)
        # The worker's reading of the same file: the same rows skipped for the same reasons.
        trained = prepare(DataSettings(path=str(files[name][0]), eval_fraction=0.0), tiny_tokenizer).report
        assert {p.row: p.message for p in trained.problems} == found, name
    late = validate(str(files["late.jsonl"][0])).report
    assert (late.format, late.valid, late.problem_count) == ("prompt_completion", 1, 250)
    assert late.problems[0].message.startswith("invalid JSON")


def test_lone_surrogates_are_a_row_problem_not_a_tokenizer_crash(tmp_path, tiny_tokenizer):
    path = tmp_path / "s.jsonl"
    path.write_text(GOOD_LINE + "\n" + '{"prompt": "bad \\ud800", "completion": "x"}\n', encoding="utf-8")
    report = validate(str(path), tokenizer=tiny_tokenizer).report
    assert report.valid == 1 and [p.row for p in report.problems] == [2]
    assert "lone surrogate" in report.problems[0].message
    with pytest.raises(DataError, match="strict"):
        prepare(DataSettings(path=str(path), eval_fraction=0.0, on_bad_rows="strict"), tiny_tokenizer)


def test_a_row_with_thousands_of_turns_renders_the_template_a_bounded_number_of_times(tmp_path, tiny_tokenizer):
    turns = [{"role": r, "content": f"{r} {i}"} for i in range(1500) for r in ("user", "assistant")]
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"messages": turns}) + "\n", encoding="utf-8")
    calls = []
    original = type(tiny_tokenizer).apply_chat_template

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    type(tiny_tokenizer).apply_chat_template = counted
    try:
        result = validate(str(path), tokenizer=tiny_tokenizer, max_seq_len=100_000)
    finally:
        type(tiny_tokenizer).apply_chat_template = original
    assert result.report.valid == 1
    assert len(calls) <= 2  # not one or two per turn (quadratic in the row's length)
    from nbfinetune.data.render import trained_spans

    trained = [text for text, on in trained_spans(tiny_tokenizer, result.preview[0]) if on]
    assert len(trained) == 1500 and trained[0].startswith("assistant 0")


def test_concurrent_launches_of_the_same_rows_do_not_race(home):
    from nbfinetune.data.materialize import materialize

    rows = [{"prompt": f"q{i}", "completion": "a" * 2000} for i in range(300)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def launch() -> None:
        try:
            barrier.wait()
            path, _ = materialize(rows)
            assert len(Path(path).read_text(encoding="utf-8").splitlines()) == 300
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    for _ in range(10):
        for stale in (home / "datasets").glob("*") if (home / "datasets").exists() else []:
            stale.unlink()
        threads = [threading.Thread(target=launch) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert [p.suffix for p in (home / "datasets").iterdir()] == [".jsonl"]

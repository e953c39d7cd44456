"""`%chat` lines that end with a question mark, chat on a failed run, and what `%%finetune` leaves behind."""

from __future__ import annotations

from unittest.mock import patch

import pytest

from nbfinetune import api


@pytest.fixture
def failed_run(home):
    """A run that failed before training (every row dropped), as stored events."""
    from nbfinetune.runs import RunStore
    from tests.helpers import synthetic_run

    store = RunStore()
    run = api.Run(synthetic_run(store, steps=0, end="failed"), store)
    assert run.summary().status == "failed"
    return run


def test_a_trailing_question_mark_is_part_of_the_message(ip, failed_run, capsys):
    asked = []
    with patch.object(api.Run, "chat", lambda self, message=None, **kw: asked.append(message) or "ok"):
        for cell in ("%chat Who are you?", "answer = %chat --max-tokens 4 Who are you?",
                     "%finetune chat What is 2 + 2?", "if True:\n    %chat Why?\n"):
            result = ip.run_cell(cell)
            assert result.success, (cell, result.error_in_exec)
    assert asked == ["Who are you?", "Who are you?", "What is 2 + 2?", "Why?"]
    assert ip.user_ns["answer"] == "ok"
    assert "not found" not in capsys.readouterr().out
    # IPython's own help still works for other lines.
    assert "pinfo" in ip.input_transformer_manager.transform_cell("len?\n")


def test_chat_on_a_failed_run_says_it_failed(ip, failed_run):
    result = ip.run_cell("%chat Who are you?")
    message = str(result.error_in_exec)
    assert f"run {failed_run.id} failed without an adapter" in message
    assert "wait for it" not in message


@pytest.mark.train
def test_cell_magic_under_a_dashboard_returns_no_stale_run(ip, home, tiny_model):
    with patch.object(api, "_in_notebook", return_value=True), patch("IPython.display.display"):
        value = ip.run_cell_magic("finetune", f"--model {tiny_model} --steps 1 --eval-samples 0", "train: {lr: 2e-4}\n")
    assert value is None
    run = api.attach(display=False)
    assert run.wait(timeout=180, progress=False).status == "finished"

"""Chat: streaming, multi-turn history, base-vs-tuned, and the template carried with the adapter."""

import pytest

from nbfinetune.core.trainer import train
from nbfinetune.serving import ChatModel, StreamedAnswer
from nbfinetune.widgets.chat import ChatWidget

from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def chat(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("chat-run")
    train(tiny_config(tiny_model, max_steps=3), lambda *a, **k: None, lambda: False, run_dir)
    return ChatModel(tiny_model, str(run_dir / "adapter"))


def test_stream_yields_chunks_and_ask_prints_once(chat, capsys):
    chunks = list(chat.stream([{"role": "user", "content": "hi"}], max_new_tokens=6))
    assert chunks and all(isinstance(c, str) for c in chunks)
    answer = chat.ask("hi", max_new_tokens=6)
    assert isinstance(answer, StreamedAnswer) and answer in capsys.readouterr().out
    assert "same chat template as training" in chat.describe()


def test_widget_multi_turn_and_base_comparison(chat):
    widget = ChatWidget(chat)
    widget.max_tokens.value = 16
    widget.submit("first question", wait=True)
    widget.compare.value = True
    widget.submit("second question", wait=True)
    roles = [m["role"] for m in widget.history]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert [who for who, _ in widget._turns] == ["user", "fine-tuned", "user", "fine-tuned", "base"]
    assert "second question" in widget.transcript.value and not widget.send.disabled
    widget.reset()
    assert widget.history == [] and widget.transcript.value == ""


def test_stop_ends_generation_early(chat):
    import threading

    stop = threading.Event()
    stop.set()
    text = "".join(chat.stream([{"role": "user", "content": "hi"}], max_new_tokens=200, stop=stop))
    assert len(text) < 20

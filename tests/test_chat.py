"""Chat: streaming, multi-turn history, base-vs-tuned, and the template carried with the adapter."""

import pytest

from nbfinetune.core.trainer import train
from nbfinetune.serving import ChatModel, StreamedAnswer
from nbfinetune.widgets.chat import ChatWidget

from tests.helpers import tiny_config

# The train tier: the chat tests talk to an adapter trained in this module's setup.
pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("chat-run")
    train(tiny_config(tiny_model, max_steps=4, save_every=2, lr=5e-2), lambda *a, **k: None, lambda: False, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def chat(tiny_model, run_dir):
    return ChatModel(tiny_model, str(run_dir / "adapter"))


def test_stream_yields_chunks_and_ask_prints_once(chat, capsys):
    chunks = list(chat.stream([{"role": "user", "content": "hi"}], max_new_tokens=6))
    assert chunks and all(isinstance(c, str) for c in chunks)
    answer = chat.ask("hi", max_new_tokens=6)
    assert isinstance(answer, StreamedAnswer) and answer in capsys.readouterr().out
    assert "same chat template as training" in chat.describe()


def test_widget_multi_turn_base_and_checkpoint_comparison(chat, run_dir, tmp_path):
    widget = ChatWidget(chat, {"step-2": str(run_dir / "checkpoints" / "step-2")})
    widget.max_tokens.value = 16
    widget.submit("first question", wait=True)
    widget.compare_with.value = "base"
    widget.submit("second question", wait=True)
    widget.compare_with.value = "step-2"
    widget.submit("third question", wait=True)
    roles = [m["role"] for m in widget.history]
    assert roles == ["user", "assistant"] * 3
    assert [who for who, _ in widget._turns] == ["user", "fine-tuned", "user", "fine-tuned", "base",
                                                 "user", "fine-tuned", "checkpoint step-2"]
    assert "error" not in [who for who, _ in widget._turns]
    assert "third question" in widget.transcript.value and not widget.send.disabled

    path = widget.save_transcript(str(tmp_path / "cases.jsonl"))
    from nbfinetune.data.prepare import load_examples

    fmt, examples, report = load_examples(path)
    assert fmt == "chat" and len(examples) == 3 and not report.problems
    assert examples[-1][1].messages[-2]["content"] == "third question"
    widget.reset()
    assert widget.history == [] and widget.transcript.value == ""


def test_answers_differ_between_adapters(chat):
    messages = [{"role": "user", "content": "Extract: Ada, 36, Turin"}]
    tuned = "".join(chat.stream(messages, max_new_tokens=12))
    base = "".join(chat.stream(messages, max_new_tokens=12, adapter="base"))
    assert tuned != base  # lr 5e-2 for 4 steps moves a tiny model visibly


def test_stop_ends_generation_early(chat):
    import threading

    stop = threading.Event()
    stop.set()
    text = "".join(chat.stream([{"role": "user", "content": "hi"}], max_new_tokens=200, stop=stop))
    assert len(text) < 20


def test_the_saved_output_shows_the_conversation(chat):
    widget = ChatWidget(chat, name="run-a")
    widget.max_tokens.value = 8
    widget.submit("what is <up>?", wait=True)
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "what is &lt;up&gt;?" in bundle["text/html"] and "fine-tuned:" in bundle["text/html"]
    assert bundle["text/plain"] == "<chat with run-a: 1 question(s)>"

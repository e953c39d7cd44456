import pytest

from nbfinetune.config import DataSettings
from nbfinetune.data.formats import Example, RowProblem
from nbfinetune.data.prepare import prepare
from nbfinetune.data.render import IGNORE, Rendered, render, render_many


def _trained_text(tokenizer, rendered):
    return tokenizer.decode([t for t in rendered.targets if t != IGNORE])


def test_loss_only_on_assistant_turns_including_the_stop_token(tiny_tokenizer):
    example = Example(messages=({"role": "user", "content": "Who is Ada?"}, {"role": "assistant", "content": "A person."},
                                {"role": "user", "content": "Age?"}, {"role": "assistant", "content": "36"}))
    rendered = render(tiny_tokenizer, example, 512)
    trained = _trained_text(tiny_tokenizer, rendered)
    assert "A person.<|im_end|>" in trained and "36<|im_end|>" in trained
    assert "Who is Ada" not in trained and "user" not in trained
    assert len(rendered.targets) == len(rendered.input_ids)
    everything = render(tiny_tokenizer, example, 512, train_on="all")
    assert everything.trained_tokens == len(everything.input_ids) - 1


def test_truncation_is_reported_and_empty_results_dropped(tiny_tokenizer):
    long_answer = Example(messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 200}))
    rendered = render(tiny_tokenizer, long_answer, 32)
    assert rendered.truncated and len(rendered.input_ids) == 32 and rendered.full_length > 32
    long_prompt = Example(messages=({"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "a"}))
    with pytest.raises(RowProblem, match=r"tokens, longer than max_seq_len=32: after truncation nothing is left"):
        render(tiny_tokenizer, long_prompt, 32)


def test_plain_text_ends_with_eos(tiny_tokenizer):
    rendered = render(tiny_tokenizer, Example(text="Lisbon is a city."), 64)
    assert rendered.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_a_chunk_renders_like_rows_one_at_a_time_and_keeps_each_rows_problem(tiny_tokenizer):
    chat = Example(messages=({"role": "user", "content": "Who is Ada?"}, {"role": "assistant", "content": "A person."}))
    two_turns = Example(messages=chat.messages + ({"role": "user", "content": "Age?"},
                                                  {"role": "assistant", "content": "36"}))
    long_prompt = Example(messages=({"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "a"}))
    text = Example(text="Lisbon is a city.")
    results = render_many(tiny_tokenizer, [chat, long_prompt, text, two_turns], 32, rows=[1, 2, 3, 4])
    assert isinstance(results[1], RowProblem) and "max_seq_len=32" in str(results[1])
    for result, example, row in zip(results, [chat, None, text, two_turns], [1, 2, 3, 4]):
        if example is not None:
            assert isinstance(result, Rendered) and result.row == row
            assert result == render(tiny_tokenizer, example, 32, row=row)
    trained = _trained_text(tiny_tokenizer, render_many(tiny_tokenizer, [two_turns], 512)[0])
    assert "A person.<|im_end|>" in trained and "36<|im_end|>" in trained and "Age?" not in trained


def test_prepare_sample_uses_its_eval_split(tiny_tokenizer):
    data = prepare(DataSettings(), tiny_tokenizer)
    assert (len(data.train), len(data.eval), len(data.eval_cases)) == (480, 24, 24)
    assert data.report.tokens["min"] > 0 and data.report.tokens["total"] > 0
    assert data.report.valid == 504 and not data.report.problems

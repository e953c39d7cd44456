"""DPO: preference rows, the loss against a direct computation, and a short run on the tiny model."""

from __future__ import annotations

import pytest
import torch

from nbfinetune.config import ConfigError, DataSettings, RunConfig
from nbfinetune.data.preference import PreferenceProblem, normalize_pair, people_preferences, prepare_preferences
from nbfinetune.data.prepare import DataError

from tests.helpers import write_jsonl


def test_preference_shapes_normalize_to_prompt_and_two_answers():
    expected = ([{"role": "user", "content": "q"}], "good", "bad")
    assert normalize_pair({"prompt": "q", "chosen": "good", "rejected": "bad"}) == expected
    user = {"role": "user", "content": "q"}
    # TRL's implicit prompt: the leading turns both message lists share
    assert normalize_pair({"chosen": [user, {"role": "assistant", "content": "good"}],
                           "rejected": [user, {"role": "assistant", "content": "bad"}]}) == expected
    assert normalize_pair({"prompt": [user], "chosen": [{"role": "assistant", "content": "good"}],
                           "rejected": [{"role": "assistant", "content": "bad"}]}) == expected
    # LLaMA-Factory: alpaca-style and ShareGPT-style preference rows
    assert normalize_pair({"instruction": "q", "chosen": "good", "rejected": "bad"}) == expected
    assert normalize_pair({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
                           "rejected": {"from": "gpt", "value": "bad"}}) == expected


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "chosen": "good"}, "missing field 'rejected'"),
    ({"chosen": "good", "rejected": "bad"}, "no prompt"),
    ({"prompt": "q", "chosen": 3, "rejected": "bad"}, "field 'chosen' must be text"),
    ({"prompt": "q", "chosen": "", "rejected": "bad"}, "field 'chosen' is empty"),
    ({"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}, r"prompt\[0\] has role 'robot'"),
])
def test_bad_preference_rows_say_which_field(row, message):
    with pytest.raises(PreferenceProblem, match=message):
        normalize_pair(row)


def test_bad_rows_are_reported_by_number_and_good_ones_kept(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "a"}, "not json {",
            {"prompt": "q3", "chosen": "a", "rejected": "b"}]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    data = prepare_preferences(DataSettings(path=str(path), eval_fraction=0.0), tiny_tokenizer)
    assert [p.row for p in data.train] == [1, 4]
    assert [(p.row, "rejected" in p.message or "JSON" in p.message) for p in data.report.problems] == [(2, True), (3, True)]
    pair = data.train[0]
    answer = tiny_tokenizer.decode([t for t in pair.chosen.targets if t != -100])
    assert answer.startswith("a")  # loss on the answer only
    with pytest.raises(DataError, match="row 2"):
        prepare_preferences(DataSettings(path=str(path), eval_fraction=0.0, on_bad_rows="strict"), tiny_tokenizer)


def test_method_is_validated():
    with pytest.raises(ConfigError, match="train.method must be one of sft, dpo"):
        RunConfig.from_dict({"train": {"method": "ppo"}})


def _answer_logp(model, pair_part) -> torch.Tensor:
    """The stock HF way: the model's own mean loss over the answer tokens, times their number."""
    from nbfinetune.data.render import IGNORE

    labels = torch.tensor([[IGNORE] + pair_part.targets[:-1]])
    out = model(input_ids=torch.tensor([pair_part.input_ids]), labels=labels)
    return -out.loss * pair_part.trained_tokens


def test_dpo_loss_equals_a_direct_computation(tiny_model, tiny_tokenizer, tmp_path):
    from nbfinetune.core.distributed import Group
    from nbfinetune.core.methods import DPO
    from nbfinetune.core.setup import load_for_training

    path = write_jsonl(tmp_path / "prefs.jsonl", people_preferences()[:4])
    config = RunConfig.from_dict({"model": tiny_model, "lora": {"r": 4},
                                  "train": {"method": "dpo", "dpo_beta": 0.5}, "data": {"path": str(path)}})
    loaded = load_for_training(config, tiny_model)
    torch.manual_seed(0)
    for name, p in loaded.model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: move the policy away from the reference
            p.data.normal_(0, 0.05)
    loaded.model.eval()
    method = DPO(config, loaded, Group.from_env())
    pairs = method.prepare(config, loaded.tokenizer).train[:3]
    with torch.no_grad():
        losses, chosen, rejected = method._pairs(pairs)
        expected = []
        for pair in pairs:
            pc, pr = _answer_logp(loaded.model, pair.chosen), _answer_logp(loaded.model, pair.rejected)
            with loaded.model.disable_adapter():
                rc, rr = _answer_logp(loaded.model, pair.chosen), _answer_logp(loaded.model, pair.rejected)
            expected.append(-torch.nn.functional.logsigmoid(0.5 * ((pc - rc) - (pr - rr))))
    torch.testing.assert_close(losses, torch.stack(expected), rtol=1e-4, atol=1e-5)
    assert float((chosen - rejected).abs().sum()) > 0  # the adapter made a difference


@pytest.mark.train
def test_dpo_run_raises_the_margin_and_reports_it(tiny_model, tmp_path):
    from nbfinetune.core.trainer import train

    from tests.test_trainer import Recorder

    rows = people_preferences()[:48]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    config = RunConfig.from_dict({"model": tiny_model, "lora": {"r": 8},
                                  "train": {"method": "dpo", "max_steps": 8, "lr": 5e-3, "batch_size": 8},
                                  "data": {"path": str(path), "eval_fraction": 0.15},
                                  "eval": {"every": 4, "samples": 2, "max_new_tokens": 8}})
    events = Recorder()
    result = train(config, events, lambda: False, tmp_path / "run")
    steps = events.of("step")
    assert len(steps) == 8 and {"chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy"} <= set(steps[0])
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the first step: log 2
    first, last = steps[0]["reward_margin"], sum(s["reward_margin"] for s in steps[-3:]) / 3
    assert last > first + 0.05
    evals = events.of("eval")
    assert evals[0]["eval_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert evals[-1]["eval_reward_margin"] > 0 and evals[-1]["eval_reward_accuracy"] > 0.5
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert "metrics" in evals[-1] and result["steps"] == 8


@pytest.mark.train
def test_modal_remote_body_runs_dpo(tiny_model, tmp_path, home):
    import json

    from nbfinetune import api
    from nbfinetune.backends.remote import remote_train

    path = write_jsonl(tmp_path / "prefs.jsonl", people_preferences()[:12])
    config = api.build_config(model=tiny_model, data=str(path), method="dpo", steps=2, batch_size=4,
                              eval_samples=0).to_dict()
    published = []
    result = remote_train(json.loads(json.dumps(config)), "d1", str(tmp_path / "volume"), published.extend,
                          lambda: None, lambda: False)
    assert result["status"] == "finished", published[-1]
    assert all("reward_margin" in e for e in published if e["type"] == "step")

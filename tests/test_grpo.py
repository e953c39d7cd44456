"""GRPO: advantages and the clipped objective, rewards shipped to the real worker subprocess (by reference and by
value), and a short run on the tiny model with its events, checkpoint and resume."""

from __future__ import annotations

import json

import pytest
import torch

from nbfinetune import api
from nbfinetune.config import ConfigError, RunConfig
from nbfinetune.core.grpo import group_advantages, grpo_token_loss
from nbfinetune.rewards import load_rewards, people_json, split_rewards

from tests.helpers import write_jsonl


def completion_length_reward(prompt, completion, **row):
    """A reward importable as 'tests.test_grpo:completion_length_reward'."""
    return min(1.0, len(completion) / 40)


def test_advantages_are_normalized_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0, 5.0, 5.0, 5.0])
    advantages = group_advantages(rewards, 4)
    assert advantages[:4].sum().abs() < 1e-5 and advantages[0] > 0 > advantages[1]
    assert torch.all(advantages[4:] == 0)  # a group whose completions all score the same teaches nothing


def test_clipped_objective_and_kl():
    logps = torch.tensor([-1.0, -1.0], requires_grad=True)
    old = torch.tensor([-1.5, -0.5])  # ratios e^0.5 ≈ 1.65 and e^-0.5 ≈ 0.61
    loss, kl = grpo_token_loss(logps, old, logps.detach(), torch.tensor([1.0, -1.0]), beta=0.0, epsilon=0.2)
    # Both ratios are outside [0.8, 1.2] on the side the advantage pushes: clipped, so no gradient.
    loss.sum().backward()
    assert torch.all(logps.grad == 0)
    torch.testing.assert_close(loss.detach(), torch.tensor([-1.2, 0.8]))
    assert torch.all(kl == 0)  # the policy equals the reference
    logp = torch.tensor([-1.0])
    _, kl = grpo_token_loss(logp, logp, torch.tensor([-2.0]), torch.tensor([0.0]), 0.1, 0.2)
    torch.testing.assert_close(kl, torch.exp(torch.tensor([-1.0])) + 1 - 1)


def test_people_json_reward_scores_parse_keys_and_values():
    answer = '{"name": "Ada", "age": 36, "city": "Turin"}'
    assert people_json("p", answer, answer=answer) == 1.0
    assert people_json("p", '{"name": "Ada", "age": 35, "city": "Turin"}', answer=answer) == 0.8
    assert people_json("p", '{"name": "Ada"}', answer=answer) == 0.4
    assert people_json("p", "Ada is 36", answer=answer) == 0.0
    assert people_json("p", f"Sure! {answer}", answer=answer) == 0.5


def test_rewards_by_value_and_by_reference_round_trip():
    bonus = 0.25

    def notebook_reward(prompt, completion, **row):
        return bonus + len(row)

    references, packed = split_rewards([notebook_reward, "tests.test_grpo:completion_length_reward"])
    assert references == ["tests.test_grpo:completion_length_reward"] and list(packed) == ["notebook_reward"]
    loaded = dict(load_rewards(references, packed))
    assert loaded["notebook_reward"]("p", "c", answer="x") == 1.25
    assert loaded["completion_length_reward"]("p", "x" * 20) == 0.5
    with pytest.raises(ValueError, match="cannot be imported here"):
        load_rewards(["no_such_module_xyz:f"], None)


def test_grpo_needs_a_reward():
    with pytest.raises(ConfigError, match="needs at least one reward"):
        RunConfig.from_dict({"train": {"method": "grpo"}})
    with pytest.raises(ConfigError, match="grpo_generations must be at least 2"):
        RunConfig.from_dict({"train": {"method": "grpo", "rewards": ["m:f"], "grpo_generations": 1}})


def _prompts(tmp_path, n=12):
    rows = [{"prompt": f"Say a word about {w}.", "answer": w} for w in ("cats", "dogs", "rain", "sun", "tea", "sea")]
    return write_jsonl(tmp_path / "prompts.jsonl", (rows * 4)[:n])


@pytest.mark.train
def test_rewards_reach_the_worker_subprocess_by_value_and_by_reference(home, tiny_model, tmp_path):
    offset = 0.125  # a notebook global captured by value: proves the worker ran this very function

    def shifted(prompt, completion, answer=None, **row):
        return offset + (answer in prompt)

    run = api.finetune(model=tiny_model, data=str(_prompts(tmp_path)), method="grpo", steps=2, batch_size=2,
                       generations=2, rewards=[shifted, "tests.test_grpo:completion_length_reward"],
                       eval_samples=2, max_seq_len=64, display=False)
    stored = json.loads((run.path / "config.json").read_text())["train"]
    assert stored["rewards"] == ["tests.test_grpo:completion_length_reward"] and list(stored["reward_code"]) == ["shifted"]
    summary = run.wait(timeout=300, progress=False)
    assert summary.status == "finished", (run.path / "worker.log").read_text()[-3000:]
    steps = [e for e in run.events() if e.type == "step"]
    assert len(steps) == 2
    first = steps[0].payload
    assert first["rewards"]["shifted"]["mean"] == pytest.approx(1.125) and first["rewards"]["shifted"]["std"] < 1e-6
    assert 0 <= first["rewards"]["completion_length_reward"]["mean"] <= 1
    assert {"kl", "completion_length", "reward", "completions"} <= set(first)
    shown = first["completions"][0]
    assert set(shown["rewards"]) == {"shifted", "completion_length_reward"} and "Say a word" in shown["prompt"]
    evals = [e.payload for e in run.events() if e.type == "eval"]
    assert evals[-1]["eval_rewards"]["shifted"] == pytest.approx(1.125)


@pytest.mark.train
def test_grpo_checkpoint_resume_and_cancel_are_shared(tiny_model, tmp_path):
    from nbfinetune.core.trainer import train

    from tests.test_trainer import Recorder

    config = RunConfig.from_dict({"model": tiny_model, "lora": {"r": 4},
                                  "data": {"path": str(_prompts(tmp_path)), "max_seq_len": 64},
                                  "train": {"method": "grpo", "rewards": ["tests.test_grpo:completion_length_reward"],
                                            "max_steps": 4, "batch_size": 2, "grpo_generations": 2,
                                            "grpo_max_new_tokens": 8, "save_every": 2},
                                  "eval": {"samples": 0}})
    calls = {"n": 0}

    def stop_after_three_checks():
        calls["n"] += 1
        return calls["n"] > 3

    first = Recorder()
    result = train(config, first, stop_after_three_checks, tmp_path / "run")
    assert result["cancelled"] and result["steps"] == 3
    assert [p["step"] for p in first.of("checkpoint")] == [2, 3]
    second = Recorder()
    result = train(config, second, lambda: False, tmp_path / "run")
    assert [p["step"] for p in second.of("step")] == [4] and result["steps"] == 4
    assert all(p["completion_length"] > 0 and p["kl"] >= 0 for p in first.of("step") + second.of("step"))


def test_try_rewards_scores_base_model_completions(tiny_model, tmp_path):
    def says_cats(prompt, completion, answer=None, **row):
        return float(answer == "cats")

    trial = api.try_rewards([says_cats, "tests.test_grpo:completion_length_reward"], data=str(_prompts(tmp_path)),
                            model=tiny_model, prompts=2, n=3, max_new_tokens=6)
    assert len(trial.rows) == 6 and trial.rewards == ["completion_length_reward", "says_cats"]
    assert [r["says_cats"] for r in trial.rows] == [1.0] * 3 + [0.0] * 3
    assert "<table>" in trial._repr_html_() and "says_cats" in trial._repr_html_()


@pytest.mark.train
def test_modal_remote_body_runs_grpo_with_a_reward_sent_by_value(tiny_model, tmp_path, home):
    """The Modal container runs backends.remote.remote_train on the config dict: the reward travels inside it."""
    from nbfinetune.backends.remote import remote_train

    def constant(prompt, completion, **row):
        return 0.5

    config = api.build_config(model=tiny_model, data=str(_prompts(tmp_path)), method="grpo", steps=1, batch_size=2,
                              generations=2, rewards=[constant], eval_samples=0, max_seq_len=64).to_dict()
    published = []
    result = remote_train(json.loads(json.dumps(config)), "g1", str(tmp_path / "volume"), published.extend,
                          lambda: None, lambda: False)
    assert result["status"] == "finished", published[-1]
    step = next(e for e in published if e["type"] == "step")
    assert step["rewards"]["constant"]["mean"] == 0.5 and step["reward"] == 0.5

"""The training loop in-process on a tiny model: real transformers + peft, seconds per test."""

import json

import pytest
import torch

from nbfinetune.core.batching import EpochSampler, collate, pick_layout, shared_prefix
from nbfinetune.core.evaluate import summed_loss
from nbfinetune.metrics import default_metrics, json_match, score
from nbfinetune.core.trainer import train
from nbfinetune.data.render import IGNORE

from tests.helpers import tiny_config


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, type, **payload):
        self.events.append((type, payload))

    def of(self, kind):
        return [p for t, p in self.events if t == kind]


def test_both_batch_layouts_give_the_stock_loss(tiny_model, tiny_tokenizer):
    """Packing must not leak attention across examples, padding must not leak into real tokens,
    and skipping the output layer on untrained positions must not change the loss."""
    from nbfinetune.config import DataSettings
    from nbfinetune.core.setup import load_base_model
    from nbfinetune.data.prepare import prepare

    model = load_base_model(tiny_model, "fp32", "cpu").eval()
    examples = prepare(DataSettings(), tiny_tokenizer).train[:4]
    with torch.no_grad():
        packed = summed_loss(model, collate(examples, "cpu", "packed"))
        shared = summed_loss(model, collate(examples, "cpu", "shared"))
        padded = summed_loss(model, collate(examples, "cpu", "padded", tiny_tokenizer.pad_token_id))
        separate = sum(summed_loss(model, collate([e], "cpu", "packed")) for e in examples)
        # Reference: the stock HF loss on each example (labels shifted by the model).
        reference = 0.0
        for e in examples:
            labels = torch.tensor([[IGNORE] + e.targets[:-1]])
            out = model(input_ids=torch.tensor([e.input_ids]), labels=labels)
            reference += float(out.loss) * e.trained_tokens
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(padded, separate, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shared, separate, rtol=1e-4, atol=1e-4)
    assert abs(float(packed) - reference) / reference < 1e-4


def test_shared_prefix_layout_takes_the_same_gradients_as_padding(tiny_model, tiny_tokenizer):
    """The prefix computed once per batch must give every LoRA weight the gradient that B separate
    copies give, with examples of different lengths (padded queries in the gathered attention)."""
    from nbfinetune.config import RunConfig
    from nbfinetune.core.setup import load_for_training
    from nbfinetune.data.prepare import prepare

    config = RunConfig.from_dict({"model": tiny_model, "lora": {"r": 4}})
    loaded = load_for_training(config, tiny_model)
    model = loaded.model
    assert pick_layout("auto", model) == "shared"
    examples = sorted(prepare(config.data, tiny_tokenizer).train[:6], key=lambda e: len(e.input_ids))
    assert len({len(e.input_ids) for e in examples}) > 1
    prefix = shared_prefix(examples)
    assert prefix > 10  # the system prompt and the fixed instruction
    batch = collate(examples, "cpu", "shared")
    assert batch.input_ids.shape[1] == sum(len(e.input_ids) for e in examples) - prefix * (len(examples) - 1)
    # LoRA B starts at zero, so nudge every adapter weight to make the check see them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)

    def gradients(layout: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = summed_loss(model, collate(examples, "cpu", layout, tiny_tokenizer.pad_token_id))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    shared_loss, shared_grads = gradients("shared")
    padded_loss, padded_grads = gradients("padded")
    torch.testing.assert_close(shared_loss, padded_loss, rtol=1e-5, atol=1e-5)
    for name, grad in padded_grads.items():
        # Summation order differs, so compare against the gradient's own scale (float32 noise ~1e-6).
        assert float((shared_grads[name] - grad).abs().max()) <= 1e-5 * float(grad.abs().max()), name
    assert any(float(g.abs().sum()) > 0 for g in padded_grads.values())


def test_early_stopping_counts_evaluations_without_improvement():
    from types import SimpleNamespace

    from nbfinetune.core.early_stopping import EarlyStopping

    loss = EarlyStopping(patience=2, min_delta=0.01)
    assert loss.observe(5, {"eval_loss": 1.0}) and not loss.observe(10, {"eval_loss": 0.995})  # within min_delta
    assert loss.observe(15, {"eval_loss": 0.5}) and loss.bad_evals == 0
    assert not loss.observe(20, {"eval_loss": 0.6}) and not loss.exhausted
    assert not loss.observe(25, {"eval_loss": 0.7}) and loss.exhausted and loss.best_step == 15
    score = EarlyStopping(patience=1, metric="json_match")
    assert score.observe(5, {"eval_loss": 9.0, "metrics": {"json_match": 0.5}})
    assert not score.observe(10, {"eval_loss": 0.1, "metrics": {"json_match": 0.25}}) and score.exhausted
    # A resumed run continues the count from the checkpoint's history.
    settings = SimpleNamespace(early_stopping=2, early_stopping_metric="eval_loss", early_stopping_min_delta=0.01)
    again = EarlyStopping.from_history(settings, {"early_stopping": loss.state() | {"observed_step": 25}})
    assert (again.best_step, again.best_value, again.bad_evals) == (15, 0.5, 2)


@pytest.mark.train
def test_early_stopping_ends_the_run_and_keeps_the_best_adapter(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from nbfinetune.config import RunConfig

    config = tiny_config(tiny_model, max_steps=12)
    # A min_delta no evaluation can beat: the first one (step 2) stays best, steps 4 and 6 use up patience.
    config = RunConfig.from_dict(config.to_dict() | {"eval": config.to_dict()["eval"] | {
        "every": 2, "early_stopping": 2, "early_stopping_min_delta": 100.0}})
    recorder = Recorder()
    result = train(config, recorder, lambda: False, tmp_path)
    assert [s["step"] for s in recorder.of("step")][-1] == 6
    assert any("early stopping at step 6" in log["message"] for log in recorder.of("log"))
    finished = recorder.of("finished")[0]["summary"]
    evals = {e["step"]: e for e in recorder.of("eval")}
    assert finished["stopped_early"] and finished["best_step"] == 2 and result["best_step"] == 2
    assert finished["eval_loss"] == evals[2]["eval_loss"] != evals[6]["eval_loss"]
    kept = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    best = load_file(str(tmp_path / "best-adapter" / "adapter_model.safetensors"))
    assert kept.keys() == best.keys() and all(torch.equal(kept[k], best[k]) for k in kept)


@pytest.mark.train
def test_early_stopping_count_survives_cancel_and_resume(tiny_model, tmp_path):
    from nbfinetune.config import RunConfig

    config = tiny_config(tiny_model, max_steps=12)
    config = RunConfig.from_dict(config.to_dict() | {"eval": config.to_dict()["eval"] | {
        "every": 2, "early_stopping": 2, "early_stopping_min_delta": 100.0}})
    checks = {"n": 0}

    def cancel_after_four_steps():
        checks["n"] += 1
        return checks["n"] > 4

    first = Recorder()
    train(config, first, cancel_after_four_steps, tmp_path)  # evals at 2 (best) and 4 (1 without improvement)
    assert first.events[-1][0] == "cancelled"
    resumed = Recorder()
    result = train(config, resumed, lambda: False, tmp_path)  # eval at 6 is the 2nd without improvement
    assert [s["step"] for s in resumed.of("step")] == [5, 6]
    assert result["best_step"] == 2 and result["stopped_early"]


def test_early_stopping_on_a_metric_the_run_does_not_compute_fails_before_training(tiny_model, tmp_path):
    import pytest

    from nbfinetune.config import RunConfig

    config = tiny_config(tiny_model)
    config = RunConfig.from_dict(config.to_dict() | {"eval": config.to_dict()["eval"] | {
        "every": 2, "early_stopping": 2, "early_stopping_metric": "exact_match"}})
    recorder = Recorder()
    with pytest.raises(ValueError, match="'exact_match' is not computed by this run; its metrics are json_match"):
        train(config, recorder, lambda: False, tmp_path)
    assert not recorder.of("step")


def test_samples_show_fixed_prompts_then_the_lowest_scoring_failures():
    from nbfinetune.core.evaluate import pick_samples

    scores = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 0.25]
    assert pick_samples(scores, 5) == [(0, "fixed"), (1, "fixed"), (2, "fixed"), (5, "lowest score"),
                                       (7, "lowest score")]
    assert pick_samples([1.0] * 8, 5) == [(i, "fixed") for i in range(5)]  # nothing failing
    assert pick_samples([0.0, 1.0], 5) == [(0, "fixed"), (1, "fixed")]


def test_sampler_covers_each_example_once_per_epoch_and_resumes_exactly():
    examples = list(range(10))
    sampler = EpochSampler(examples, 4, seed=1)
    first_epoch = [x for _ in range(2) for x in next(sampler)][:8] + next(sampler)[:2]
    assert sorted(first_epoch) == examples
    resumed = EpochSampler(examples, 4, seed=1, position=sampler.position)
    assert next(resumed) == next(EpochSampler(examples, 4, seed=1, position=sampler.position))


def test_loss_falls_and_events_follow_the_contract(tiny_model, tmp_path):
    emit = Recorder()
    result = train(tiny_config(tiny_model), emit, lambda: False, tmp_path)
    kinds = [t for t, _ in emit.events]
    assert kinds[-1] == "finished" and "started" in kinds
    steps = emit.of("step")
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert all(s["tokens"] > s["trained_tokens"] > 0 and s["tokens_per_s"] > 0 for s in steps)
    evals = emit.of("eval")
    assert [e["step"] for e in evals] == [0, 12]
    assert set(evals[0]["metrics"]) == {"json_match", "json_valid"} and evals[0]["samples"]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert result["last_loss"] == steps[-1]["loss"]


@pytest.mark.train
def test_cancel_keeps_adapter_and_a_resumable_checkpoint_and_resume_continues(tiny_model, tmp_path):
    emit = Recorder()
    stop_after = {"n": 0}

    def should_stop():
        stop_after["n"] += 1
        return stop_after["n"] > 5  # five steps, then cancel

    train(tiny_config(tiny_model), emit, should_stop, tmp_path)
    assert emit.events[-1][0] == "cancelled" and emit.of("checkpoint")[0]["step"] == 5
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    resumed = Recorder()
    train(tiny_config(tiny_model), resumed, lambda: False, tmp_path)
    steps = [s["step"] for s in resumed.of("step")]
    assert steps == list(range(6, 13))  # the curve continues, it does not restart
    assert resumed.of("started")[0]["resumed_step"] == 5
    assert [e["step"] for e in resumed.of("eval")] == [12]  # the base eval is not repeated

    # Same losses as an uninterrupted run: optimizer, scheduler and data position were restored.
    straight = Recorder()
    train(tiny_config(tiny_model), straight, lambda: False, tmp_path / "straight")
    torch.testing.assert_close([s["loss"] for s in resumed.of("step")],
                               [s["loss"] for s in straight.of("step")][5:], rtol=1e-4, atol=1e-5)


@pytest.mark.train
def test_periodic_eval_and_checkpoints(tiny_model, tmp_path):
    emit = Recorder()
    train(tiny_config(tiny_model, save_every=4), emit, lambda: False, tmp_path)
    assert [c["step"] for c in emit.of("checkpoint")] == [4, 8]
    assert (tmp_path / "checkpoints" / "step-8" / "trainer_state.pt").is_file()


def test_metrics():
    ref = json.dumps({"name": "Ada", "age": 36})
    assert json_match('{"age": 36, "name": "Ada"}', ref) == 1.0
    assert json_match("```json\n{\"age\": 36, \"name\": \"Ada\"}\n```", ref) == 1.0
    assert json_match("Ada is 36", ref) == 0.0
    assert default_metrics([ref]) == ["json_match", "json_valid"] and default_metrics(["Paris"]) == []
    assert score(["exact_match", "contains"], ["Paris", "It is paris."], ["Paris", "Paris"]) == \
        {"exact_match": 0.5, "contains": 1.0}


@pytest.mark.train
def test_gradient_checkpointing_gives_the_same_losses(tiny_model, tmp_path):
    plain, checkpointed = Recorder(), Recorder()
    train(tiny_config(tiny_model, max_steps=3), plain, lambda: False, tmp_path / "a")
    train(tiny_config(tiny_model, max_steps=3, gradient_checkpointing=True), checkpointed, lambda: False, tmp_path / "b")
    torch.testing.assert_close([s["loss"] for s in checkpointed.of("step")], [s["loss"] for s in plain.of("step")],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.train
def test_user_metric_by_module_path(tiny_model, tmp_path):
    emit = Recorder()
    config = tiny_config(tiny_model, max_steps=2)
    config.eval.metrics = ["tests.helpers:starts_like_reference", "contains"]
    train(config, emit, lambda: False, tmp_path)
    final = emit.of("eval")[-1]
    assert set(final["metrics"]) == {"tests.helpers:starts_like_reference", "contains"}
    assert set(final["base_metrics"]) == set(final["metrics"])


@pytest.mark.train
def test_resume_skips_broken_newer_checkpoints_and_reports_them(tiny_model, tmp_path):
    """A kill mid-save (0-byte state), a full disk (truncated state) or a lost history.json must not
    make every later resume fail: resume from the newest complete checkpoint and say what was skipped."""
    import shutil

    train(tiny_config(tiny_model, max_steps=9, save_every=4), Recorder(), lambda: False, tmp_path)
    good = tmp_path / "checkpoints" / "step-8"
    for step, damage in [(9, "empty"), (10, "truncated"), (11, "no-history")]:
        broken = shutil.copytree(good, tmp_path / "checkpoints" / f"step-{step}")
        state = broken / "trainer_state.pt"
        if damage == "empty":
            state.write_bytes(b"")
        elif damage == "truncated":
            state.write_bytes(state.read_bytes()[:8192])
        else:
            (broken / "history.json").unlink()
    resumed = Recorder()
    train(tiny_config(tiny_model, max_steps=12), resumed, lambda: False, tmp_path)
    assert resumed.of("started")[0]["resumed_step"] == 8
    warnings = [e["message"] for e in resumed.of("log") if e["level"] == "warning"]
    assert [w.split(":")[0] for w in warnings] == [f"skipped the broken checkpoint step-{s}" for s in (11, 10, 9)]
    assert "history.json is missing" in warnings[0] and "trainer_state.pt" in warnings[1]
    assert [s["step"] for s in resumed.of("step")] == [9, 10, 11, 12]


@pytest.mark.train
def test_a_full_disk_during_a_checkpoint_says_so_and_leaves_no_partial_checkpoint(tiny_model, tmp_path, monkeypatch):
    import nbfinetune.core.checkpoints as checkpoints

    real_save = torch.save

    def disk_fills(obj, path, *args, **kwargs):
        if "step-8" in str(path):  # what torch reports when its zip writer hits a full disk
            open(path, "wb").write(b"PK" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7232 vs 7124")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills)
    try:
        train(tiny_config(tiny_model, max_steps=12, save_every=4), Recorder(), lambda: False, tmp_path)
    except OSError as exc:
        error = exc
    assert "no space left on device" in str(error) and str(tmp_path / "checkpoints" / "step-8") in str(error)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-4"], "nothing half-written"
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoints.latest_checkpoint(tmp_path).name == "step-4"
    resumed = Recorder()
    train(tiny_config(tiny_model, max_steps=12, save_every=4), resumed, lambda: False, tmp_path)
    assert resumed.of("started")[0]["resumed_step"] == 4 and resumed.of("finished")


@pytest.mark.train
def test_checkpoints_keep_the_random_state_of_every_generator(tiny_model, tmp_path):
    import random

    train(tiny_config(tiny_model, max_steps=4, save_every=2), Recorder(), lambda: False, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=False)["rng"]
    assert set(state) >= {"cpu", "python"} and ("cuda" in state) == torch.cuda.is_available()
    from nbfinetune.core.checkpoints import _set_rng_state

    _set_rng_state(state)
    first = (torch.rand(1).item(), random.random())
    _set_rng_state(state)
    assert (torch.rand(1).item(), random.random()) == first


@pytest.mark.train
def test_cancel_right_after_a_resume_keeps_the_better_adapter(tiny_model, tmp_path):
    """Issue 11: a cancel at step 0 saved an untrained adapter over the trained one."""
    train(tiny_config(tiny_model, max_steps=6), Recorder(), lambda: False, tmp_path)
    adapter = tmp_path / "adapter" / "adapter_model.safetensors"
    trained = adapter.read_bytes()
    import shutil

    shutil.rmtree(tmp_path / "checkpoints", ignore_errors=True)  # a finished run: nothing to resume from
    cancelled = Recorder()
    train(tiny_config(tiny_model, max_steps=6), cancelled, lambda: True, tmp_path)
    assert cancelled.of("cancelled")[0]["step"] == 0
    assert adapter.read_bytes() == trained
    assert cancelled.of("cancelled")[0]["adapter_path"] == str(tmp_path / "adapter")
    fresh = Recorder()
    train(tiny_config(tiny_model, max_steps=6), fresh, lambda: True, tmp_path / "fresh")
    assert fresh.of("cancelled")[0]["adapter_path"] is None and not (tmp_path / "fresh" / "adapter").exists()

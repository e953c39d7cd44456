"""Integration: real tiny-model training in the worker subprocess, as a user launches it."""

import json
import signal
import time

import pytest

from nbfinetune import api
from nbfinetune.backends.local import LocalBackend
from nbfinetune.runs import RunStore, read_events

from tests.helpers import chat_row, wait_for, write_jsonl

# The train tier: each test trains the tiny model in a worker process.
pytestmark = pytest.mark.train



def test_subprocess_run_persists_dense_events_and_a_loadable_adapter(home, tiny_model):
    run = api.finetune(model=tiny_model, steps=12, lr=5e-3, eval_samples=4, display=False)
    summary = run.wait(timeout=180, progress=False)
    assert summary.status == "finished", (summary, (run.path / "worker.log").read_text()[-2000:])
    events = run.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(a.time <= b.time for a, b in zip(events, events[1:]))
    assert events[-1].type == "finished" and all(e.run_id == run.id for e in events)
    losses = [e["loss"] for e in events if e.type == "step"]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert (home / "runs" / run.id / "events.jsonl").is_file()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, summary.adapter_path)
    assert any("lora_" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == base.config.vocab_size
    assert [s.run_id for s in api.runs().runs] == [run.id]


def test_bad_data_fails_with_the_row_problems_before_training(home, tiny_model, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"messages": [{"role": "user", "content": "no answer"}]}])
    # A file with no usable row is refused at launch, in the kernel, with the same row problems ...
    with pytest.raises(ValueError, match="row 1: invalid JSON .*; row 2: no assistant turn"):
        api.finetune(model=tiny_model, data=str(path), steps=3, display=False)
    # ... and when the bad rows run past what the launch check reads, the worker fails before training.
    path.write_text(path.read_text() * 120, encoding="utf-8")
    run = api.finetune(model=tiny_model, data=str(path), steps=3, display=False)
    summary = run.wait(timeout=120, progress=False)
    assert summary.status == "failed"
    failed = run.events()[-1]
    assert failed["error"] == "DataError"
    assert "train row 1: invalid JSON" in failed["message"] and "train row 2: no assistant turn" in failed["message"]
    assert not [e for e in run.events() if e.type == "step"]


def test_graceful_cancel_keeps_adapter_and_checkpoint(home, tiny_model):
    run = api.finetune(model=tiny_model, steps=100000, eval_samples=0, display=False)
    wait_for(lambda: any(e.type == "step" and e["step"] >= 3 for e in run.events()))
    run.cancel()
    summary = run.wait(timeout=60, progress=False)
    assert summary.status == "cancelled"
    kinds = [e.type for e in run.events()]
    assert kinds[-2:] == ["checkpoint", "cancelled"]
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()


def test_killed_worker_ends_as_failed_and_keeps_earlier_events(home, tiny_model):
    run = api.finetune(model=tiny_model, steps=100000, eval_samples=0, display=False)
    wait_for(lambda: any(e.type == "step" for e in run.events()))
    child = int((run.path / "train.pid").read_text().split()[0])
    import os

    os.kill(child, signal.SIGKILL)  # what the OOM killer does
    summary = run.wait(timeout=60, progress=False)
    events = run.events()
    assert summary.status == "failed" and events[-1]["error"] == "Killed(SIGKILL)"
    assert "ran out of memory" in events[-1]["message"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert any(e.type == "step" for e in events)


def test_reattach_from_a_fresh_process_replays_everything(home, tiny_model):
    """A kernel restart loses every in-memory object; the run and its history must not depend on them."""
    run = api.finetune(model=tiny_model, steps=4, eval_samples=0, display=False)
    run.wait(timeout=120, progress=False)
    import subprocess
    import sys

    code = ("import json, nbfinetune as n; r = n.attach(%r, display=False); "
            "print(json.dumps([r.status, [e.seq for e in r.follow()]]))" % run.id)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    status, seqs = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == "finished" and seqs == [e.seq for e in run.events()]


def test_resume_after_cancel_continues_the_curve_in_the_same_stream(home, tiny_model):
    run = api.finetune(model=tiny_model, steps=60, eval_samples=0, display=False)
    wait_for(lambda: any(e.type == "step" and e["step"] >= 3 for e in run.events()))
    run.cancel()
    assert run.wait(timeout=60, progress=False).status == "cancelled"
    stopped_at = max(e["step"] for e in run.events() if e.type == "step")
    run.resume()
    summary = run.wait(timeout=180, progress=False)
    assert summary.status == "finished" and summary.step == 60
    events = run.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    steps = [e["step"] for e in events if e.type == "step"]
    assert steps == list(range(1, 61)), "the curve continues where it stopped"
    resumed = [e for e in events if e.type == "started"][-1]
    assert resumed["resumed_step"] == stopped_at


def test_export_merges_and_verifies(home, tiny_model, tmp_path):
    run = api.finetune(model=tiny_model, steps=3, eval_samples=0, lr=5e-2, display=False)
    run.wait(timeout=120, progress=False)
    result = run.export(tmp_path / "merged")
    assert result["max_logit_difference"] < 1e-3
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(result["path"])
    assert not any("lora_" in name for name, _ in model.named_parameters())
    assert AutoTokenizer.from_pretrained(result["path"]).chat_template


def test_hard_cancel_ends_as_cancelled_and_keeps_events(home, tiny_model):
    run = api.finetune(model=tiny_model, steps=100000, eval_samples=0, display=False)
    wait_for(lambda: any(e.type == "step" for e in run.events()))
    run.cancel(hard=True)
    summary = run.wait(timeout=60, progress=False)
    events = run.events()
    assert summary.status == "cancelled" and events[-1]["hard"] is True
    assert any(e.type == "step" for e in events)


def _cleanup(run):
    """If a test fails with a worker still alive, do not leave it training."""
    import os

    try:
        os.killpg(int((run.path / "worker.pid").read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def test_resume_right_when_status_says_cancelled(home, tiny_model):
    """The `cancelled` event is written before the worker exits; resume must not answer "still running"."""
    run = api.finetune(model=tiny_model, steps=30, eval_samples=0, display=False)
    try:
        wait_for(lambda: any(e.type == "step" and e["step"] >= 2 for e in run.events()))
        run.cancel()
        wait_for(lambda: run.status == "cancelled", timeout=60)
        run.resume()
        summary = run.wait(timeout=180, progress=False)
        assert summary.status == "finished" and summary.step == 30
    finally:
        _cleanup(run)


def test_hard_cancel_right_after_launch_kills_on_the_first_try(home, tiny_model):
    run = api.finetune(model=tiny_model, steps=100000, eval_samples=0, display=False)
    try:
        run.cancel(hard=True)  # before the supervisor has started its trainer
        summary = run.wait(timeout=90, progress=False)
        assert summary.status == "cancelled" and run.events()[-1]["hard"] is True
        assert not any(e.type == "step" for e in run.events())
    finally:
        _cleanup(run)


def test_the_trainer_dies_with_its_supervisor_and_one_writer_is_enforced(home, tiny_model):
    import os
    import subprocess
    import sys

    from nbfinetune.ownership import our_pid

    run = api.finetune(model=tiny_model, steps=100000, eval_samples=0, display=False)
    try:
        wait_for(lambda: any(e.type == "step" for e in run.events()))
        # A second writer, by hand or by a resume, is refused while the trainer lives.
        second = subprocess.run([sys.executable, "-m", "nbfinetune.worker", str(run.path)], capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 3 and "still running" in second.stderr
        with pytest.raises(RuntimeError, match="still running"):
            LocalBackend().resume(run.id, run.store)
        trainer = our_pid(run.path / "train.pid")
        assert trainer is not None
        os.kill(our_pid(run.path / "worker.pid"), signal.SIGKILL)
        wait_for(lambda: our_pid(run.path / "train.pid") is None, timeout=30)
        wait_for(lambda: run.status == "lost", timeout=30)
        events = run.events()
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        run.resume()  # no writer left: resume may start one, and says what happened
        assert "stopped without a final event" in run.events()[len(events)]["message"]
        wait_for(lambda: [e.type for e in run.events()].count("started") == 2, timeout=120)
        run.cancel(hard=True)
        assert run.wait(timeout=60, progress=False).status == "cancelled"
    finally:
        _cleanup(run)


def test_a_secret_in_the_model_path_stays_out_of_config_events_and_listings(home, tiny_model, tmp_path, capsys):
    import shutil

    from nbfinetune import cli

    secret = "hf_" + "Q7" * 12
    model = shutil.copytree(tiny_model, tmp_path / secret / "model")
    run = api.finetune(model=str(model), steps=2, eval_samples=0, display=False)
    assert run.wait(timeout=120, progress=False).status == "finished", (run.path / "worker.log").read_text()[-1500:]
    for name in ("config.json", "events.jsonl"):
        assert secret not in (run.path / name).read_text(), name
    assert "[redacted]" in (run.path / "config.json").read_text()
    assert any("[redacted]" in str(e.get("message", "")) for e in run.events() if e.type == "log")
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert run.id in out and secret not in out

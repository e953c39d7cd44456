"""Integration: real tiny-model training in the worker subprocess, as a user launches it."""

import json
import signal
import time

import pytest

from nbfinetune import api
from nbfinetune.runs import RunStore, read_events

from tests.helpers import chat_row, wait_for, write_jsonl



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
    child = int((run.path / "train.pid").read_text())
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

"""The benchmarks run end to end on the tiny model and print the JSON they promise (no timings checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The train tier: every benchmark trains, generates or serves with the tiny model.
pytestmark = pytest.mark.train

ROOT = Path(__file__).resolve().parents[1]


def last_json(script: str, *args: str, home: Path) -> dict:
    # This checkout first (not whichever nbfinetune the venv has installed).
    env = {"NBFINETUNE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("data", ["sample:people", "varied"])
def test_trainer_benchmark_compares_three_trainers_on_equal_terms(tiny_model, tmp_path, data):
    result = last_json("bench_trainer.py", "--model", tiny_model, "--data", data, "--steps", "4", "--warmup", "1",
                       home=tmp_path)
    for key in ("tokens_per_s", "stock_hf_tokens_per_s", "tuned_hf_tokens_per_s", "eval_loss", "stock_hf_eval_loss"):
        assert result[key] > 0, key
    # Same init, batches and optimizer: the three trainers must end at the same eval loss.
    assert result["eval_loss"] == pytest.approx(result["stock_hf_eval_loss"], rel=1e-4)
    assert result["eval_loss"] == pytest.approx(result["tuned_hf_eval_loss"], rel=1e-4)
    assert result["data"] == data and result["mfu"] is None  # CPU: no MFU


def test_generation_benchmark_reports_first_token_and_rates(tiny_model, tmp_path):
    result = last_json("bench_generate.py", "--model", tiny_model, "--new-tokens", "8", "--prompts", "2", home=tmp_path)
    for variant in ("unmerged", "merged", "base"):
        assert result[variant]["ttft_s"] > 0
        assert result[variant]["streamed_tokens_per_s"] > 0 and result[variant]["plain_tokens_per_s"] > 0


def test_serving_benchmark_reports_load_levels_and_baseline(tiny_model, tmp_path):
    result = last_json("bench_serve.py", "--model", tiny_model, "--new-tokens", "4", "--duration", "1",
                       "--clients", "1,4", home=tmp_path)
    assert set(result["server"]) == {"1", "4"} and result["errors"] == 0
    for level in (*result["server"].values(), result["baseline"]):
        assert level["requests"] > 0 and level["tokens_per_s"] > 0 and level["ttft_p95_s"] >= level["ttft_p50_s"] > 0


def test_gpu_benchmark_runs_in_smoke_mode_and_reports_every_candidate(tmp_path):
    """On CPU in --smoke mode (a tiny model built from a config): the JSON has each candidate's numbers."""
    result = last_json("bench_gpu.py", "--smoke", "--lengths", "lognormal", home=tmp_path)
    (row,) = result["rows"]
    for candidate in ("ours", "stock_hf", "padding_free_hf"):
        assert row[candidate]["tokens_per_s"] > 0 and row[candidate]["peak_memory_gib"] > 0, candidate
    assert row["speedup_vs_stock_hf"] > 0 and row["speedup_vs_padding_free_hf"] > 0
    assert result["versions"]["torch"] and result["gpu"] is None


def test_fault_injection_quick_subset_loses_nothing(tmp_path):
    """`make faults` in small: a trainer killed mid-step, full disks and corrupted event files."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "faults.py"), "--quick"], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["faults_injected"] >= 15
    assert result["runs_unrecoverable"] == result["events_lost"] == result["tracebacks"] == 0, result

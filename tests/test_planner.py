"""The memory planner: estimates from the config alone, checked against measured peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbfinetune.config import RunConfig
from nbfinetune.planner import DoesNotFit, ModelShape, choose_gpu, plan_memory

ROOT = Path(__file__).resolve().parents[1]
LLAMA_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "tie_word_embeddings": False}
LLAMA_70B = LLAMA_8B | {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                        "num_attention_heads": 64}


def _config(**train) -> RunConfig:
    seq = train.pop("max_seq_len", 2048)
    return RunConfig.from_dict({"data": {"max_seq_len": seq}, "train": {"batch_size": 8} | train})


def test_parameter_count_from_the_config_matches_the_real_model():
    assert abs(ModelShape.from_config(LLAMA_8B).params - 8.03e9) / 8.03e9 < 0.01
    assert abs(ModelShape.from_config(LLAMA_70B).params - 70.6e9) / 70.6e9 < 0.01


def test_cheapest_gpu_that_fits_with_checkpointing_only_when_needed():
    small = choose_gpu(LLAMA_8B, _config(batch_size=1, max_seq_len=512))
    assert small.gpu == "L4" and not small.estimate.gradient_checkpointing  # 16 GB bf16 weights: not a T4
    big = choose_gpu(LLAMA_8B, _config())
    assert big.estimate.gradient_checkpointing  # 16k tokens of 8B activations fit nowhere cheap without it
    qlora = choose_gpu(LLAMA_8B, _config(quantization="nf4", batch_size=2))
    assert qlora.estimate.parts["weights"] < 8 * 2 ** 30 and qlora.gpu == "T4"  # 8B QLoRA fits 16 GB (fp16 there)
    with pytest.raises(DoesNotFit, match="nf4"):
        choose_gpu(LLAMA_70B, _config(batch_size=64, max_seq_len=4096))
    assert choose_gpu(LLAMA_70B, _config(quantization="nf4", batch_size=1)).gpu in ("L40S", "A100-80GB", "H100")


def test_gpu_auto_and_refusing_what_cannot_fit(tiny_model, tmp_path, home):
    from nbfinetune import api

    assert api.build_config(model=tiny_model, gpu="auto").gpu == "T4"
    model_dir = tmp_path / "llama-8b-config-only"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(LLAMA_8B))
    auto = api.build_config(model=str(model_dir), gpu="auto", batch_size=8, max_seq_len=2048)
    assert auto.train.gradient_checkpointing and auto.gpu != "T4"
    with pytest.raises(DoesNotFit, match="T4"):
        api.finetune(model=str(model_dir), backend="modal", gpu="T4", display=False)


@pytest.mark.train
@pytest.mark.parametrize("checkpointing", [False])
def test_estimate_is_within_15_percent_of_measured_peak_rss(tmp_path, checkpointing):
    """A config-built model of ~220 MB trained for two steps in its own process (peak RSS is per process)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from nbfinetune.testing import make_tiny_model

    config = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(make_tiny_model(tmp_path / "tiny")).save_pretrained(tmp_path / "model")
    args = [sys.executable, str(ROOT / "bench" / "measure_memory.py"), str(tmp_path / "model"), "--batch", "4",
            "--length", "192"] + (["--checkpointing"] if checkpointing else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                               "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert abs(result["estimate_mb"] - result["peak_rss_mb"]) / result["peak_rss_mb"] < 0.15, result

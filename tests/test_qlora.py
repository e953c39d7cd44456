"""QLoRA: the base model in 4-bit NF4 (bitsandbytes, which runs on CPU too), LoRA weights in fp32."""

from __future__ import annotations

import json

import pytest
import torch

from nbfinetune.core.batching import collate
from nbfinetune.core.evaluate import eval_loss, summed_loss

from tests.helpers import tiny_config

pytest.importorskip("bitsandbytes")


def _qlora_config(model, **train):
    return tiny_config(model, quantization="nf4", **train).with_overrides({"eval.generate": False})


def _lora_grads(loaded, batch):
    from nbfinetune.core.precision import MixedPrecision

    model = loaded.model
    model.zero_grad()
    mixed = MixedPrecision.for_run(loaded.precision, loaded.device)
    with mixed.autocast(model):
        loss = summed_loss(model, batch)
    mixed.backward(loss)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_qlora_loads_4bit_and_gradients_survive_an_evaluation(tiny_model, tiny_tokenizer):
    """bitsandbytes repacks 4-bit weights for inference on AVX512-BF16 CPUs after an eval-mode forward;
    that kernel has no backward, so gradients after the first evaluation would be wrong."""
    from bitsandbytes.nn import Linear4bit

    from nbfinetune.core.setup import load_for_training
    from nbfinetune.data.prepare import prepare

    config = _qlora_config(tiny_model)
    loaded = load_for_training(config, tiny_model)
    assert loaded.precision == "bf16"
    assert sum(isinstance(m, Linear4bit) for m in loaded.model.modules()) == 2 * 7  # every linear of 2 layers
    lora = {n: p for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    with torch.no_grad():
        for name, p in lora.items():
            p.add_(torch.randn_like(p) * 0.05)
    examples = prepare(config.data, tiny_tokenizer).train[:4]
    batch = collate(examples, "cpu", "padded", tiny_tokenizer.pad_token_id)
    eval_loss(loaded.model, examples, 4, "cpu", tiny_tokenizer.pad_token_id, "padded", loaded.precision)
    loaded.model.train()
    grads = _lora_grads(loaded, batch)
    # Reference: the same model with each 4-bit weight replaced by a plain bf16 Linear of its dequantized value.
    import bitsandbytes.functional as bnb_functional

    for name, module in list(loaded.model.named_modules()):
        if isinstance(module, Linear4bit):
            plain = torch.nn.Linear(module.in_features, module.out_features, bias=False, dtype=torch.bfloat16)
            plain.weight = torch.nn.Parameter(bnb_functional.dequantize_4bit(module.weight.data,
                                                                             module.weight.quant_state),
                                              requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(loaded.model.get_submodule(parent), child, plain)
    reference = _lora_grads(loaded, batch)
    assert any(float(g.abs().sum()) > 0 for g in reference.values())
    for name, grad in reference.items():
        error = float((grads[name] - grad).abs().max()) / float(grad.abs().max())
        assert error < 2e-2, (name, error)


@pytest.mark.train
def test_qlora_trains_resumes_and_exports_a_standard_adapter(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from nbfinetune.core.export import export_merged
    from nbfinetune.core.trainer import train

    events = []
    stop_at = {"n": 0}

    def should_stop():
        return len([e for e in events if e[0] == "step"]) >= 3

    result = train(_qlora_config(tiny_model, max_steps=5, lr=2e-2), lambda type, **p: events.append((type, p)),
                   should_stop, tmp_path)
    assert result.get("cancelled") and (tmp_path / "checkpoints" / "step-3").is_dir()
    resumed = []
    result = train(_qlora_config(tiny_model, max_steps=5, lr=2e-2), lambda type, **p: resumed.append((type, p)),
                   lambda: False, tmp_path)
    assert [p["resumed_step"] for t, p in resumed if t == "started"] == [3]
    assert [p["step"] for t, p in resumed if t == "step"] == [4, 5]
    losses = [p["loss"] for t, p in events + resumed if t == "step"]
    assert losses[-1] < losses[0]

    adapter = tmp_path / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)  # no 4-bit base state inside

    exported = export_merged(tiny_model, str(adapter), tmp_path / "merged", quantization="nf4")
    # Merged into the NF4-dequantized weights the adapter was trained against: logits within bf16 rounding.
    # Merging into the original weights instead would differ by the quantization error (checked below).
    from transformers import AutoModelForCausalLM

    from nbfinetune.core.setup import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    ids = tokenizer("Meet Kenji from Osaka", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
        merged_model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
        merged = merged_model(ids).logits
    assert exported["max_logit_difference"] < 3e-2 * max(1.0, float(merged.abs().max()))
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    original = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()[q_proj]
    assert not torch.equal(merged_model.state_dict()[q_proj], original)
    assert float((merged - plain).abs().max()) > 0


def test_quantization_is_a_config_field_a_magic_flag_and_a_cli_flag():
    from nbfinetune.api import build_config
    from nbfinetune.cli import _parser as build_parser
    from nbfinetune.config import ConfigError, RunConfig
    from nbfinetune.magics import train_parser

    assert build_config(quantization="nf4").train.quantization == "nf4"
    assert train_parser().parse_args(["--quantization", "nf4"]).quantization == "nf4"
    assert build_parser().parse_args(["train", "--quantization", "nf4"]).quantization == "nf4"
    with pytest.raises(ConfigError, match="train.quantization"):
        RunConfig.from_dict({"train": {"quantization": "int3"}})


@pytest.mark.slow
def test_qlora_trains_the_demo_model(tmp_path):
    from nbfinetune.config import DEFAULT_MODEL, RunConfig
    from nbfinetune.core.trainer import train

    events = []
    config = RunConfig.from_dict({"model": DEFAULT_MODEL, "data": {"max_seq_len": 128},
                                  "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "quantization": "nf4"},
                                  "eval": {"generate": False}})
    result = train(config, lambda type, **p: events.append((type, p)), lambda: False, tmp_path)
    losses = [p["loss"] for t, p in events if t == "step"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert result["eval_loss"] is not None

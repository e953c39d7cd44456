"""Export merges the adapter into the base checkpoint shard by shard, in the base's own dtype."""

from __future__ import annotations

import json

import torch


def _adapter(base_dir, out_dir, seed=1):
    """A LoRA adapter with non-zero B (a trained one's shape), saved in standard peft format."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def test_export_keeps_the_base_dtype_and_shards_and_equals_base_plus_adapter(tiny_model, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbfinetune.core.export import export_merged

    base_dir = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(
        base_dir, max_shard_size="100KB")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(base_dir)
    shards = sorted(p.name for p in base_dir.glob("*.safetensors"))
    assert len(shards) > 1
    adapter = _adapter(base_dir, tmp_path / "adapter")

    result = export_merged(str(base_dir), str(adapter), tmp_path / "merged")
    merged_dir = tmp_path / "merged"
    assert sorted(p.name for p in merged_dir.glob("*.safetensors")) == shards
    for shard in shards:
        with safe_open(str(merged_dir / shard), framework="pt") as f:
            assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "bfloat16"

    # Reference: peft's own merge in fp32 from the same bf16 weights.
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                          str(adapter)).merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    ref_state = reference.state_dict()
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, ref_state[key].to(torch.bfloat16).float(), rtol=0, atol=0, msg=key)
    assert result["max_logit_difference"] < 0.1

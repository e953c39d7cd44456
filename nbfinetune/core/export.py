"""Export: merge a LoRA adapter into its base model and save a standalone model directory.

The merge streams the base checkpoint shard by shard: each weight that has an adapter gets
W + scale · B·A, computed in fp32 on the GPU when there is one and stored back in the base's own dtype;
every other tensor is copied as it is. Peak memory is one shard plus the adapter, and an 8B bf16 model
stays a 16 GB bf16 model (not 32 GB of fp32 built in 96 GB of RAM).

QLoRA adapters were trained against the NF4-dequantized weights, so those are what they are merged
into: the quantized model is loaded as in training and each 4-bit weight dequantized.

The result is checked by loading it back and comparing its logits with base+adapter on a prompt
rendered with the training chat template — "export silently wrong" is a known failure in this field.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class ExportMismatch(RuntimeError):
    """The merged model does not reproduce base+adapter."""


def export_merged(model_path: str, adapter_path: str, out_dir: str | Path, atol: float | None = None,
                  quantization: str | None = None) -> dict[str, Any]:
    from .setup import load_tokenizer, pick_device

    out_dir = Path(out_dir)
    device = pick_device()
    device = device if device == "cuda" else "cpu"
    tokenizer = load_tokenizer(adapter_path)
    deltas = lora_deltas(Path(adapter_path))
    dequantized = _dequantized_weights(model_path, quantization, device) if quantization else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = merge_shards(Path(model_path), out_dir, deltas, dequantized, device)
    unused = set(deltas) - merged
    if unused:
        raise ExportMismatch(f"adapter weights for {len(unused)} modules have no weight in the base "
                             f"checkpoint (e.g. {sorted(unused)[0]}); {out_dir} should not be used")
    _copy_model_files(Path(model_path), out_dir)
    tokenizer.save_pretrained(out_dir)  # carries the exact chat template used in training
    difference, tolerance = _verify(model_path, adapter_path, out_dir, tokenizer, quantization, device, atol)
    if difference > tolerance:
        raise ExportMismatch(f"merged model differs from base+adapter by {difference:.2e} "
                             f"(> {tolerance:.1e}); not trustworthy — {out_dir} was written but should not "
                             "be used")
    return {"path": str(out_dir), "max_logit_difference": difference}


def lora_deltas(adapter_dir: Path) -> dict[str, tuple[Any, Any, float]]:
    """{base weight key: (A, B, scale)} from an adapter in standard peft format."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora") or config.get("fan_in_fan_out"):
        raise ExportMismatch("DoRA and fan-in-fan-out adapters are not supported by the streaming merge")
    weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    out: dict[str, tuple[Any, Any, float]] = {}
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        r = _pattern(config.get("rank_pattern"), module, config["r"])
        alpha = _pattern(config.get("alpha_pattern"), module, config["lora_alpha"])
        scale = alpha / (r ** 0.5) if config.get("use_rslora") else alpha / r
        out[module + ".weight"] = (a, b, float(scale))
    return out


def _pattern(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    for name, value in (patterns or {}).items():
        if module == name or module.endswith("." + name):
            return value
    return default


def merge_shards(model_dir: Path, out_dir: Path, deltas: dict[str, tuple[Any, Any, float]],
                 dequantized: dict[str, Any], device: str) -> set[str]:
    """Write each of the base's safetensors shards with the adapter merged in; returns the merged keys."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    merged: set[str] = set()
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors = {}
        with safe_open(str(shard), framework="pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                tensor = f.get_tensor(key)
                if key in deltas:
                    base = dequantized.get(key, tensor)
                    tensors[key] = _merge(base, *deltas[key], device).to(tensor.dtype).cpu()
                    merged.add(key)
                else:
                    tensors[key] = tensor
        save_file(tensors, str(out_dir / shard.name), metadata={"format": "pt", **metadata})
    return merged


def _merge(weight: Any, a: Any, b: Any, scale: float, device: str) -> Any:
    import torch

    w = weight.to(device=device, dtype=torch.float32)
    return w.addmm_(b.to(device, torch.float32), a.to(device, torch.float32), alpha=scale)


def _copy_model_files(model_dir: Path, out_dir: Path) -> None:
    for name in ("config.json", "generation_config.json", "model.safetensors.index.json"):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)


def _dequantized_weights(model_path: str, quantization: str, device: str) -> dict[str, Any]:
    """{weight key: the dequantized 4-bit weight the adapter was trained against}."""
    import bitsandbytes.functional as bnb_functional
    from bitsandbytes.nn import Linear4bit

    from .setup import load_base_model, quiet_loading

    with quiet_loading():
        model = load_base_model(model_path, "bf16", device, quantization)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            weight = module.weight
            # A bitsandbytes Params4bit, which torch's stubs know only as a Tensor.
            quant_state = weight.quant_state  # type: ignore[attr-defined]
            out[name + ".weight"] = bnb_functional.dequantize_4bit(weight.data, quant_state).cpu()
    return out


def _verify(model_path: str, adapter_path: str, out_dir: Path, tokenizer: Any, quantization: str | None,
            device: str, atol: float | None) -> tuple[float, float]:
    """(max logit difference between merged and base+adapter, the tolerance for the base's dtype)."""
    import gc

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..data.render import render_prompt
    from .setup import attention_for, load_base_model, quiet_loading

    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Say hello."}])
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    # Any: transformers types `.to` as an unbound wrapper, so a str device reads as a wrong `self`.
    base: Any
    reloaded: Any
    with quiet_loading(), torch.no_grad():
        if quantization:
            base = load_base_model(model_path, "bf16", device, quantization)
        else:
            base = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto",
                                                        attn_implementation=attention_for(model_path))
            base = base.to(device)
        expected = PeftModel.from_pretrained(base, adapter_path).eval()(ids).logits.float()
        del base
        gc.collect()
        reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype="auto",
                                                        attn_implementation=attention_for(str(out_dir)))
        reloaded = reloaded.to(device)
        actual = reloaded.eval()(ids).logits.float()
        half = next(reloaded.parameters()).dtype != torch.float32
    difference = float((actual - expected).abs().max())
    if atol is None:
        # Half precision rounds every weight and activation: compare against the logits' own scale.
        atol = 3e-2 * max(1.0, float(expected.abs().max())) if half or quantization else 1e-3
    return difference, atol

"""Export: merge a LoRA adapter into its base model and save a standalone model directory.

The result is checked by loading it back and comparing its logits with base+adapter on a prompt
rendered with the training chat template — "export silently wrong" is a known failure in this field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ExportMismatch(RuntimeError):
    """The merged model does not reproduce base+adapter."""


def export_merged(model_path: str, adapter_path: str, out_dir: str | Path, atol: float = 1e-3) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..data.render import render_prompt
    from .setup import load_tokenizer, quiet_loading

    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(adapter_path)
    with quiet_loading():
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        tuned = PeftModel.from_pretrained(base, adapter_path).eval()
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Say hello."}])
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = tuned(ids).logits
    merged = tuned.merge_and_unload()
    merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)  # carries the exact chat template used in training
    with quiet_loading():
        reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        difference = float((reloaded(ids).logits - expected).abs().max())
    if difference > atol:
        raise ExportMismatch(f"merged model differs from base+adapter by {difference:.2e} (> {atol}); "
                             f"not trustworthy — {out_dir} was written but should not be used")
    return {"path": str(out_dir), "max_logit_difference": difference}

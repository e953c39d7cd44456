"""Device, precision, model + tokenizer loading, and the LoRA adapter."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig


@dataclass
class Loaded:
    model: Any  # peft.PeftModel
    tokenizer: Any
    model_path: str
    device: str
    precision: str
    trainable_params: int
    total_params: int


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No 'Loading weights' bars or library deprecation chatter in cell outputs and worker logs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_precision(requested: str, device: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_path: str, precision: str, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    from .attention import register

    # Plain SDPA, plus per-example attention over shared-prefix batches (core.attention).
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(precision),
                                                 attn_implementation=register())
    return model.to(device)


def load_for_training(config: RunConfig, model_path: str) -> Loaded:
    import torch
    from peft import LoraConfig, get_peft_model

    device = pick_device()
    precision = pick_precision(config.train.precision, device)
    tokenizer = load_tokenizer(model_path)
    with quiet_loading():
        base = load_base_model(model_path, precision, device)
        if config.train.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
        torch.manual_seed(config.train.seed)  # LoRA A is initialised randomly: same seed, same run
        model = get_peft_model(base, lora)
    trainable, total = model.get_nb_trainable_parameters()
    return Loaded(model=model, tokenizer=tokenizer, model_path=model_path, device=device, precision=precision,
                  trainable_params=int(trainable), total_params=int(total))

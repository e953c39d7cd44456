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
    """bf16 where the GPU has it natively, fp16 on older ones (T4, V100), fp32 elsewhere."""
    import torch

    if requested != "auto":
        return requested
    if device == "cuda":
        # Without including_emulation=False, T4/V100 answer True and get slow emulated bf16.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "fp32"


def configure_device(device: str) -> None:
    """TF32 tensor cores for the fp32 matmuls that remain (LoRA weights, fp32 runs) on Ampere+."""
    import torch

    if device == "cuda":
        torch.set_float32_matmul_precision("high")


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attention_for(model_path: str) -> str:
    """Our SDPA attention (core.attention) where the model has SDPA; transformers' eager attention for
    models without it (soft-capped attention: Gemma-2; attention sinks: gpt-oss)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from .attention import register

    config = AutoConfig.from_pretrained(model_path)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is not None and not getattr(model_class, "_supports_sdpa", False):
        return "eager"
    return register()


def quantization_config(quantization: str | None, precision: str) -> Any:
    """QLoRA: the frozen base in 4-bit NF4 (double-quantized), computing in the run's half precision."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    compute = torch_dtype(precision if precision in ("bf16", "fp16") else "bf16")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization,
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


def _device_index(device: str) -> Any:
    """The process's current CUDA device (one per data-parallel rank), not always cuda:0."""
    import torch

    return torch.cuda.current_device() if device == "cuda" else device


def load_base_model(model_path: str, precision: str, device: str, quantization: str | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    # Any: transformers types `.to` as an unbound wrapper (a str device reads as a wrong `self`), and the
    # loaded modules' own attributes as Tensor | Module.
    model: Any
    if quantization is not None:
        # Non-quantized parts (embeddings, norms, head) in the compute dtype; bitsandbytes places the
        # 4-bit weights on the device while loading (a quantized model cannot be moved afterwards).
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype(precision if precision != "fp32" else "bf16"),
            attn_implementation=attention_for(model_path), device_map={"": _device_index(device)},
            quantization_config=quantization_config(quantization, precision))
        for module in model.modules():
            # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for inference the first time it
            # runs in eval mode without grad (an evaluation); that kernel has no backward, so every later
            # training step would get wrong gradients through the frozen layers.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        return model
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(precision),
                                                 attn_implementation=attention_for(model_path))
    return model.to(device)


def load_for_training(config: RunConfig, model_path: str) -> Loaded:
    import torch
    from peft import LoraConfig, get_peft_model

    from .logits import check_output_path

    device = pick_device()
    configure_device(device)
    quantization = config.train.quantization
    precision = pick_precision(config.train.precision, device)
    if quantization is not None and precision == "fp32":
        precision = "bf16"  # NF4 weights are dequantized to a half-precision compute dtype
    tokenizer = load_tokenizer(model_path)
    with quiet_loading():
        base = load_base_model(model_path, precision, device, quantization)
        if quantization is not None:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(
                base, use_gradient_checkpointing=config.train.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        elif config.train.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        check_output_path(base, base.get_decoder(), base.get_output_embeddings())
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
        torch.manual_seed(config.train.seed)  # LoRA A is initialised randomly: same seed, same run
        model = get_peft_model(base, lora)
    trainable, total = model.get_nb_trainable_parameters()
    return Loaded(model=model, tokenizer=tokenizer, model_path=model_path, device=device, precision=precision,
                  trainable_params=int(trainable), total_params=int(total))

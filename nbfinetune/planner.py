"""Memory planner: how much memory a LoRA/QLoRA run needs, from the model's config alone (no weights
loaded), and the cheapest Modal GPU it fits on — decided before any GPU second is billed.

    weights        parameters × bytes of their dtype; NF4: 4 bits + block scales for the decoder's linear
                   weights, the rest (embeddings, norms, head) in fp32
                   (peft's prepare_model_for_kbit_training)
    LoRA + AdamW   LoRA parameters × 16 bytes (fp32 weight, gradient, two moments)
    activations    saved for backward, per token per layer; with gradient checkpointing only each layer's
                   input plus one layer's worth being recomputed
    logits         the chunked cross-entropy's one chunk (core.logits), fp32, with its gradient
    runtime        CUDA context and workspaces on a GPU; the interpreter and libraries on a CPU

The per-token coefficients were measured on CPU against peak RSS (bench/measure_memory.py; the test
checks 15%). Stdlib only: the launcher and pre-flight call it without importing torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .config import RunConfig

GIB = 2 ** 30
# Share of a GPU's memory the plan may use: the caching allocator fragments and rounds up.
USABLE = 0.9
# Activation elements saved per token per layer, as multiples of the widths they scale with:
# hidden (two norms' inputs and outputs), attention heads × head_dim (q, k, v with K/V heads expanded,
# the output and o_proj's input), intermediate (gate, up, activation, product).
PER_HIDDEN, PER_ATTENTION, PER_INTERMEDIATE = 4.0, 5.0, 4.0
# CPU SDPA with a mask runs the math kernel: scores and probabilities, heads × sequence length per token.
PER_SCORE_CPU = 2.0
# Memory held per byte of saved tensors: glibc's heap keeps freed backward temporaries (measured on CPU,
# bench/measure_memory.py); PyTorch's CUDA caching allocator rounds blocks and fragments less.
ALLOCATOR = {"cpu": 1.57, "cuda": 1.2}
# core.logits.CHUNK_ELEMENTS (duplicated: this module must not import torch)
CHUNK_ELEMENTS = 32 * 1024 * 1024
RUNTIME_BYTES = {"cuda": 1.0 * GIB, "cpu": 0.39 * GIB}  # CPU: python + torch + transformers, measured


class DoesNotFit(ValueError):
    """No offered GPU has enough memory for this run, even with gradient checkpointing."""


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # per token: the dense MLP width, or experts_per_token × expert width
    expert_params: int  # all experts' MLP weights per layer (== 3·hidden·intermediate when dense)
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        text = config.get("text_config") or config
        hidden = text["hidden_size"]
        heads = text["num_attention_heads"]
        head_dim = text.get("head_dim") or hidden // heads
        dense = text.get("intermediate_size") or 4 * hidden
        experts = text.get("num_local_experts") or text.get("num_experts") or 0
        if experts:
            width = text.get("moe_intermediate_size") or dense
            active = text.get("num_experts_per_tok") or 1
            intermediate, expert_params = active * width, experts * 3 * hidden * width
        else:
            intermediate, expert_params = dense, 3 * hidden * dense
        tied = config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        return cls(vocab=text["vocab_size"], hidden=hidden, layers=text["num_hidden_layers"], heads=heads,
                   kv_heads=text.get("num_key_value_heads") or heads, head_dim=head_dim,
                   intermediate=intermediate, expert_params=expert_params, tied=bool(tied))

    @property
    def attention_params(self) -> int:
        return self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)

    @property
    def linear_params(self) -> int:
        """Weights of the decoder's linear layers: what NF4 quantizes and LoRA adapts."""
        return self.layers * (self.attention_params + self.expert_params)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.layers * 2 * self.hidden + self.hidden

    def lora_params(self, r: int) -> int:
        """all-linear LoRA: r × (in + out) per adapted linear layer (dense MLPs; MoE experts are not
        adapted)."""
        h, d = self.hidden, self.head_dim
        attention = r * ((h + self.heads * d) * 2 + (h + self.kv_heads * d) * 2)
        mlp = r * 3 * (h + self.intermediate) if self.expert_params == 3 * h * self.intermediate else 0
        return self.layers * (attention + mlp)


@dataclass
class MemoryEstimate:
    parts: dict[str, int]
    gradient_checkpointing: bool

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def __str__(self) -> str:
        shown = ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items())
        return f"~{self.total / GIB:.1f} GiB ({shown} GiB)"


@dataclass
class GpuChoice:
    gpu: str
    estimate: MemoryEstimate
    memory_gib: float
    considered: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        checkpointing = " with gradient checkpointing" if self.estimate.gradient_checkpointing else ""
        return f"{self.gpu} ({self.memory_gib:.0f} GiB): needs {self.estimate}{checkpointing}"


def read_model_config(model: str) -> dict[str, Any]:
    """config.json of a local model directory or a hub model (the HF cache first; no weights)."""
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    from .core.models import resolve_model  # our demo model may be a converted local copy

    with open(os.path.join(resolve_model(model), "config.json"), encoding="utf-8") as f:
        return json.load(f)


def plan_memory(model: str | dict[str, Any] | ModelShape, config: RunConfig, device: str = "cuda",
                gradient_checkpointing: bool | None = None) -> MemoryEstimate:
    shape = model if isinstance(model, ModelShape) else ModelShape.from_config(
        model if isinstance(model, dict) else read_model_config(model))
    t = config.train
    checkpointing = t.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    precision = t.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    if t.quantization:
        precision = "bf16" if precision == "fp32" else precision
    half = precision in ("bf16", "fp16")
    element = 2 if half else 4
    if t.quantization:
        # 4 bits per weight, an 8-bit scale per 64-weight block plus its fp32 scale per 256 blocks.
        weights = (shape.linear_params * (0.5 + 1 / 64 + 4 / (64 * 256))
                   + (shape.params - shape.linear_params) * 4)
    else:
        weights = shape.params * element
    lora = shape.lora_params(config.lora.r) * 16
    tokens = t.batch_size * config.data.max_seq_len
    kind = "cuda" if device.startswith("cuda") else "cpu"
    widths = (PER_HIDDEN * shape.hidden + PER_ATTENTION * shape.heads * shape.head_dim
              + PER_INTERMEDIATE * shape.intermediate)
    if kind == "cpu":
        widths += PER_SCORE_CPU * shape.heads * config.data.max_seq_len
    per_layer_token = element * ALLOCATOR[kind] * widths
    if checkpointing:
        activations = tokens * (shape.layers * shape.hidden * element + per_layer_token)
    else:
        activations = tokens * shape.layers * per_layer_token
    # The trained positions' logits in chunks: fp32 logits, their softmax gradient, the head's output.
    logits = min(tokens * shape.vocab, max(CHUNK_ELEMENTS, shape.vocab)) * (4 + 4 + element)
    parts = {"weights": int(weights), "lora_and_optimizer": int(lora), "activations": int(activations),
             "logits": int(logits), "runtime": int(RUNTIME_BYTES[kind])}
    return MemoryEstimate(parts, checkpointing)


def choose_gpu(model: str | dict[str, Any] | ModelShape, config: RunConfig) -> GpuChoice:
    """The cheapest single Modal GPU the run fits on, turning gradient checkpointing on only when it must."""
    from .pricing import price_table

    table = price_table()
    by_price = sorted(table["per_gpu_second"], key=lambda g: table["per_gpu_second"][g])
    shape = model if isinstance(model, ModelShape) else ModelShape.from_config(
        model if isinstance(model, dict) else read_model_config(model))
    fp16_only = set(table.get("peak_fp16_tflops", {}))
    plans = [plan_memory(shape, config, "cuda", checkpointing)
             for checkpointing in ((False, True) if not config.train.gradient_checkpointing else (True,))]
    for gpu in by_price:
        if gpu in fp16_only and config.train.precision == "bf16":
            continue
        memory = table["memory_gib"][gpu]
        for estimate in plans:  # without checkpointing (≈20% faster) where it fits
            if estimate.total <= memory * GIB * USABLE:
                return GpuChoice(gpu, estimate, memory, by_price)
    largest = max(table["memory_gib"].values())
    hint = "" if config.train.quantization else "; try quantization='nf4' (QLoRA),"
    raise DoesNotFit(f"the run needs {plan_memory(shape, config, 'cuda', True)} even with gradient "
                     f"checkpointing; the largest GPU has {largest} GiB{hint} a smaller batch_size or "
                     "max_seq_len")


def apply_choice(config: RunConfig, choice: GpuChoice) -> RunConfig:
    """The config with the chosen GPU and, when the plan needs it, gradient checkpointing on."""
    overrides: dict[str, Any] = {"gpu": choice.gpu}
    if choice.estimate.gradient_checkpointing:
        overrides["train.gradient_checkpointing"] = True
    return config.with_overrides(overrides)

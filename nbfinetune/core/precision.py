"""Mixed precision: bf16/fp16 autocast over a half-precision base model with fp32 LoRA weights.

peft keeps LoRA weights in fp32 (the master copy the optimizer updates) and, by default, casts each
adapted layer's input up to fp32 — an fp32 copy of every such input saved for backward and fp32
matmuls. Under autocast that casting is switched off (`peft.helpers.disable_input_dtype_casting`):
the LoRA matmuls take half-precision inputs while the weights and their gradients stay fp32. fp16 has
a narrow exponent range, so its loss is scaled (GradScaler) to keep small gradients from underflowing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class MixedPrecision:
    dtype: Any  # torch.bfloat16 / torch.float16, or None for plain fp32
    device: str
    scaler: Any  # torch.amp.GradScaler, enabled only for fp16

    @classmethod
    def for_run(cls, precision: str, device: str) -> MixedPrecision:
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        kind = device.split(":")[0]
        return cls(dtype, kind, torch.amp.GradScaler(kind, enabled=dtype is torch.float16))

    @contextlib.contextmanager
    def autocast(self, model: Any) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        import torch
        from peft.helpers import disable_input_dtype_casting

        with torch.autocast(self.device, dtype=self.dtype), disable_input_dtype_casting(model):
            yield

    def backward(self, loss: Any) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: Any, params: list[Any], max_grad_norm: float) -> float:
        """Unscale (fp16), clip, step; a step whose gradients overflowed is skipped by the scaler."""
        import torch

        self.scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        self.scaler.step(optimizer)
        self.scaler.update()
        return grad_norm

    @property
    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else None

"""GPU prices and cost estimates. The price table lives in prices.json (dated) so it is easy to update.

Estimate before launch: tokens × ~4·N FLOPs per token (LoRA training, N = parameters) at an assumed MFU
of the GPU's peak bf16 throughput, plus the price per GPU-second. Every estimate says its assumptions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

ALIASES = {"A10G": "A10", "A100": "A100-40GB"}


class UnknownGPU(ValueError):
    """A GPU type Modal does not offer (or we have no price for)."""


@cache
def price_table() -> dict[str, Any]:
    return json.loads((resources.files("nbfinetune") / "prices.json").read_text(encoding="utf-8"))


def parse_gpu(spec: str) -> tuple[str, int]:
    """'H100' → ('H100', 1); 'a100-80gb:4' → ('A100-80GB', 4). Raises UnknownGPU with the known types."""
    name, _, count = spec.strip().partition(":")
    name = ALIASES.get(name.upper(), name.upper())
    known = price_table()["per_gpu_second"]
    if name not in known:
        raise UnknownGPU(f"unknown GPU type {spec!r}; Modal offers {', '.join(known)} "
                         "(append ':N' for N GPUs)")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise UnknownGPU(f"GPU count in {spec!r} must be a number, e.g. 'H100:2'") from None
    if not 1 <= n <= 8:
        raise UnknownGPU(f"GPU count must be 1 to 8, got {n}")
    return name, n


def cost_so_far(gpu: str, seconds: float) -> float:
    name, count = parse_gpu(gpu)
    return seconds * count * price_table()["per_gpu_second"][name]


@dataclass
class Estimate:
    gpu: str
    tokens: int
    seconds: float
    usd: float
    assumptions: str

    def __str__(self) -> str:
        minutes = self.seconds / 60
        return (f"~{minutes:,.1f} min on {self.gpu}, ~${self.usd:,.2f} ({self.assumptions})")


def estimate(gpu: str, tokens: int, parameters: int, overhead_s: float = 120.0) -> Estimate:
    """Time and cost of training `tokens` tokens of a model with `parameters` parameters on `gpu`."""
    name, count = parse_gpu(gpu)
    table = price_table()
    half = "bf16" if name in table["peak_bf16_tflops"] else "fp16"  # T4: no bf16
    flops_per_s = table[f"peak_{half}_tflops"][name] * 1e12 * table["assumed_mfu"] * count
    seconds = 4 * parameters * tokens / flops_per_s + overhead_s
    usd = seconds * count * table["per_gpu_second"][name]
    assumptions = (f"{table['assumed_mfu']:.0%} of peak {half}, 4 FLOPs per parameter per token, "
                   f"{overhead_s:.0f} s start-up; prices of {table['date']}")
    return Estimate(gpu=gpu, tokens=tokens, seconds=seconds, usd=usd, assumptions=assumptions)


# Dense half-precision tensor-core peaks (TFLOP/s, bf16; fp16 where the card has no bf16) by the name
# CUDA reports. Matched on whole words, most specific first: "H100 PCIe" is not an H100 SXM, "L40"
# is not an "L4", an "A10G" (AWS) is not an A10.
DEVICE_PEAKS: list[tuple[tuple[str, ...], float, str]] = [
    (("H100", "PCIE"), 756, "bf16"), (("H100", "NVL"), 835, "bf16"), (("H100",), 989, "bf16"),
    (("H200", "NVL"), 835, "bf16"), (("H200",), 989, "bf16"), (("B200",), 2250, "bf16"),
    (("A100",), 312, "bf16"), (("L40S",), 362, "bf16"), (("L40",), 181, "bf16"), (("L4",), 121, "bf16"),
    (("A10G",), 70, "bf16"), (("A10",), 125, "bf16"), (("T4",), 65, "fp16"),
]


def device_peak(device_name: str) -> tuple[float, str] | None:
    """(peak TFLOP/s, dtype) for a CUDA device name such as 'NVIDIA H100 PCIe'; None when unknown."""
    import re

    words = set(re.findall(r"[A-Z0-9]+", device_name.upper().replace("-", " ")))
    for needed, peak, dtype in DEVICE_PEAKS:
        if all(w in words for w in needed):
            return peak, dtype
    return None

from __future__ import annotations

import pytest

from nbfinetune.pricing import device_peak, estimate, price_table


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", (989, "bf16")), ("NVIDIA H100 PCIe", (756, "bf16")), ("NVIDIA H100 NVL", (835, "bf16")),
    ("NVIDIA H200", (989, "bf16")), ("NVIDIA B200", (2250, "bf16")), ("NVIDIA A100-SXM4-80GB", (312, "bf16")),
    ("NVIDIA A100 80GB PCIe", (312, "bf16")), ("NVIDIA L40S", (362, "bf16")), ("NVIDIA L40", (181, "bf16")),
    ("NVIDIA L4", (121, "bf16")), ("NVIDIA A10G", (70, "bf16")), ("NVIDIA A10", (125, "bf16")),
    ("Tesla T4", (65, "fp16")), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_matches_the_exact_gpu_not_a_substring(name, peak):
    assert device_peak(name) == peak


def test_t4_has_no_bf16_peak_and_its_estimate_says_fp16():
    table = price_table()
    assert "T4" not in table["peak_bf16_tflops"] and table["peak_fp16_tflops"]["T4"] == 65
    assert "fp16" in estimate("T4", 10 ** 6, 10 ** 8).assumptions
    assert set(table["memory_gib"]) == set(table["per_gpu_second"])

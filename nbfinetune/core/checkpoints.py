"""Checkpoints: the adapter in standard peft format plus optimizer, scheduler and data position."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .batching import DataPosition

STATE_FILE = "trainer_state.pt"


def save_adapter(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Standard peft layout (adapter_config.json + adapter_model.safetensors) plus the tokenizer,
    so chat and export use exactly the template the adapter was trained with."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_checkpoint(directory: Path, model: Any, tokenizer: Any, optimizer: Any, scheduler: Any, step: int,
                    position: DataPosition, history: dict[str, Any]) -> Path:
    import torch

    save_adapter(model, tokenizer, directory)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "position": asdict(position), "rng": torch.get_rng_state()}, directory / STATE_FILE)
    (directory / "history.json").write_text(json.dumps(history), encoding="utf-8")
    return directory


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = [p for p in (run_dir / "checkpoints").glob("step-*") if (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def load_adapter_weights(model: Any, directory: Path) -> None:
    """Put a saved adapter's weights back into the training model (same LoRA config)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))


def load_checkpoint(directory: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, DataPosition]:
    import torch

    load_adapter_weights(model, directory)
    state = torch.load(directory / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), DataPosition(**state["position"])

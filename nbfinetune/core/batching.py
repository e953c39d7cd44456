"""Batches without wasted output-layer work, in one of three layouts:

- shared: one row, no padding, and the prefix every example of the batch starts with (system prompt,
  fixed instruction) stored and computed once; attention runs per example (see core.attention).
  The default wherever the model runs on our SDPA attention and every layer is full causal attention.
- packed: all examples concatenated into one row, positions restarting per example — no pad tokens at all.
  Only on request: with SDPA/eager the packed row needs a dense block-diagonal T×T mask, so attention
  cost grows with the square of the whole batch.
- padded: one row per example, right-padded, with an attention mask — attention stays per example.
  The default for sliding-window or soft-capped attention and for hybrid models (conv/SSM layers).

Either way only positions that carry a target go through the output layer (see core.evaluate).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.render import IGNORE, Rendered

LAYOUTS = ("auto", "shared", "packed", "padded")


@dataclass
class Batch:
    input_ids: Any  # LongTensor [B, T]
    position_ids: Any  # LongTensor [B, T] (packed) or None
    attention_mask: Any  # LongTensor [B, T] (padded) or None
    targets: Any  # LongTensor [B, T], IGNORE where nothing is trained
    tokens: int  # real (non-pad) tokens
    trained_tokens: int  # positions with a target
    segments: Any = None  # core.attention.Segments (shared layout)


# Token mixers that are not attention: conv (LFM2), SSM (Mamba, Jamba, Granite-4-H, Falcon-H1), linear
# attention / gated delta rule (Qwen3-Next). They run along the whole row, so one row must hold one example.
ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention"}
_RECURRENT_MODULES = ("Mamba", "ShortConv", "Mixer", "SSM", "DeltaNet", "LinearAttention", "Rwkv",
                      "Recurrent")


def pick_layout(requested: str, model: Any) -> str:
    """"shared" where every layer is our full causal attention (no window, no soft-capping), else "padded".

    "packed" is never chosen automatically: on SDPA it needs a dense T×T mask.
    """
    if requested != "auto":
        return requested
    from .attention import NAME

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != NAME:
        return "padded"
    # Multimodal wrappers (Gemma3ForConditionalGeneration) keep the language model's settings here.
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    windowed = getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)
    capped = getattr(text, "attn_logit_softcapping", None)
    return "shared" if all_attention(model, text) and not windowed and not capped else "padded"


def all_attention(model: Any, text_config: Any) -> bool:
    """Whether every decoder layer mixes tokens by attention alone (no conv/SSM/linear-attention layers)."""
    for field in ("layer_types", "layers_block_type"):
        types = getattr(text_config, field, None)
        if types and any(t not in ATTENTION_LAYER_TYPES for t in types):
            return False
    if any(k.startswith(("mamba_", "ssm_", "conv_", "linear_")) for k in vars(text_config)):
        return False
    modules = model.modules() if hasattr(model, "modules") else ()
    return not any(type(m).__module__.startswith("transformers.")
                   and any(word in type(m).__name__ for word in _RECURRENT_MODULES) for m in modules)


def shared_prefix(examples: Sequence[Rendered]) -> int:
    """Length of the prefix all examples start with, up to the first trained position of any of them
    (a trained prefix position would count its loss once instead of once per example)."""
    if len(examples) < 2:
        return 0
    limit = min(next((i for i, t in enumerate(e.targets) if t != IGNORE), len(e.targets)) for e in examples)
    first = examples[0].input_ids
    n = 0
    while n < limit and all(e.input_ids[n] == first[n] for e in examples):
        n += 1
    return n


def collate(examples: Sequence[Rendered], device: str, layout: str = "padded", pad_id: int = 0,
            share_prefix: bool = True) -> Batch:
    """`share_prefix=False` (e.g. with LoRA dropout, which should draw a mask per example) keeps the
    shared layout's other savings but computes every example's prefix itself."""
    import torch

    tokens = sum(len(e.input_ids) for e in examples)
    trained = sum(e.trained_tokens for e in examples)
    if layout == "shared":
        from .attention import segments

        p = shared_prefix(examples) if share_prefix else 0
        ids = list(examples[0].input_ids[:p]) + [t for e in examples for t in e.input_ids[p:]]
        positions = list(range(p)) + [i for e in examples for i in range(p, len(e.input_ids))]
        targets = list(examples[0].targets[:p]) + [t for e in examples for t in e.targets[p:]]
        # An all-ones mask, so transformers builds no T×T mask for what looks like packed positions.
        return Batch(torch.tensor([ids], device=device), torch.tensor([positions], device=device),
                     torch.ones(1, len(ids), dtype=torch.long, device=device),
                     torch.tensor([targets], device=device),
                     tokens, trained, segments(p, [len(e.input_ids) - p for e in examples], device))
    if layout == "packed":
        ids = [t for e in examples for t in e.input_ids]
        positions = [p for e in examples for p in range(len(e.input_ids))]
        targets = [t for e in examples for t in e.targets]
        return Batch(torch.tensor([ids], device=device), torch.tensor([positions], device=device), None,
                     torch.tensor([targets], device=device), tokens, trained)
    width = max(len(e.input_ids) for e in examples)
    id_rows = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    target_rows = [e.targets + [IGNORE] * (width - len(e.targets)) for e in examples]
    return Batch(torch.tensor(id_rows, device=device), None, torch.tensor(mask, device=device),
                 torch.tensor(target_rows, device=device), tokens, trained)


@dataclass
class DataPosition:
    """Where the sampler is: enough to resume the exact same order after a restart."""

    epoch: int = 0
    index: int = 0


class EpochSampler:
    """Seeded shuffle per epoch; yields lists of `batch_size` examples, crossing epoch boundaries."""

    def __init__(self, examples: Sequence[Rendered], batch_size: int, seed: int,
                 position: DataPosition | None = None):
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        # A copy: the caller's position object (e.g. from a checkpoint) must not move with us.
        self.position = dataclasses.replace(position) if position else DataPosition()

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def __iter__(self) -> Iterator[list[Rendered]]:
        return self

    def __next__(self) -> list[Rendered]:
        batch: list[Rendered] = []
        while len(batch) < self.batch_size:
            order = self._order(self.position.epoch)
            take = order[self.position.index: self.position.index + self.batch_size - len(batch)]
            batch.extend(self.examples[i] for i in take)
            self.position.index += len(take)
            if self.position.index >= len(order):
                self.position = DataPosition(self.position.epoch + 1, 0)
        return batch

    @property
    def epoch_progress(self) -> float:
        return self.position.epoch + self.position.index / max(1, len(self.examples))


def batches_in_order(examples: Sequence[Rendered], batch_size: int) -> Iterator[list[Rendered]]:
    for start in range(0, len(examples), batch_size):
        yield list(examples[start: start + batch_size])

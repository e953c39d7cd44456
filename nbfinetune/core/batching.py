"""Batches without wasted output-layer work, in one of two layouts:

- packed: all examples concatenated into one row, positions restarting per example — no pad tokens at all.
  Best where attention has variable-length kernels (flash-attention); with SDPA/eager the packed row
  needs a dense block-diagonal T×T mask, so attention cost grows with the square of the whole batch.
- padded: one row per example, right-padded, with an attention mask — attention stays per example.

Either way only positions that carry a target go through the output layer (see core.evaluate).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.render import IGNORE, Rendered

LAYOUTS = ("auto", "packed", "padded")


@dataclass
class Batch:
    input_ids: Any  # LongTensor [B, T]
    position_ids: Any  # LongTensor [B, T] (packed) or None
    attention_mask: Any  # LongTensor [B, T] (padded) or None
    targets: Any  # LongTensor [B, T], IGNORE where nothing is trained
    tokens: int  # real (non-pad) tokens
    trained_tokens: int  # positions with a target


def pick_layout(requested: str, model: Any) -> str:
    if requested != "auto":
        return requested
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    return "packed" if implementation.startswith("flash_attention") else "padded"


def collate(examples: Sequence[Rendered], device: str, layout: str = "padded", pad_id: int = 0) -> Batch:
    import torch

    tokens = sum(len(e.input_ids) for e in examples)
    trained = sum(e.trained_tokens for e in examples)
    if layout == "packed":
        ids = [t for e in examples for t in e.input_ids]
        positions = [p for e in examples for p in range(len(e.input_ids))]
        targets = [t for e in examples for t in e.targets]
        return Batch(torch.tensor([ids], device=device), torch.tensor([positions], device=device), None,
                     torch.tensor([targets], device=device), tokens, trained)
    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    targets = [e.targets + [IGNORE] * (width - len(e.targets)) for e in examples]
    return Batch(torch.tensor(ids, device=device), None, torch.tensor(mask, device=device),
                 torch.tensor(targets, device=device), tokens, trained)


@dataclass
class DataPosition:
    """Where the sampler is: enough to resume the exact same order after a restart."""

    epoch: int = 0
    index: int = 0


class EpochSampler:
    """Seeded shuffle per epoch; yields lists of `batch_size` examples, crossing epoch boundaries."""

    def __init__(self, examples: Sequence[Rendered], batch_size: int, seed: int, position: DataPosition | None = None):
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

"""Padding-free batches: several examples concatenated into one row, positions restarting per example.

No pad tokens are computed, and only positions that carry a target are sent through the output layer.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.render import IGNORE, Rendered


@dataclass
class PackedBatch:
    input_ids: Any  # LongTensor [1, T]
    position_ids: Any  # LongTensor [1, T]
    targets: Any  # LongTensor [T]
    tokens: int  # real tokens in the batch
    trained_tokens: int  # positions with a target


def pack(examples: Sequence[Rendered], device: str) -> PackedBatch:
    import torch

    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for example in examples:
        ids.extend(example.input_ids)
        positions.extend(range(len(example.input_ids)))
        targets.extend(example.targets)
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        position_ids=torch.tensor([positions], dtype=torch.long, device=device),
        targets=torch.tensor(targets, dtype=torch.long, device=device),
        tokens=len(ids),
        trained_tokens=sum(1 for t in targets if t != IGNORE),
    )


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

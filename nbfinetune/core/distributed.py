"""Data-parallel training across processes with torch.distributed — the same code on 1 process, on N GPUs
(NCCL, e.g. Modal's "H100:N"), and on N CPU processes (gloo, which is how it is tested here).

Every rank walks the same seeded batch order and takes its share of each batch; losses are normalized by
the trained tokens of the whole batch and LoRA gradients are summed across ranks, so N processes compute
exactly the step one process would. Rank 0 alone emits events, evaluates and saves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Group:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Group:
        """Join the process group that torchrun (or our tests) describe in RANK / WORLD_SIZE."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return cls(rank=dist.get_rank(), world=dist.get_world_size())

    def shard(self, batch: list[Any]) -> list[Any]:
        if len(batch) < self.world:
            raise ValueError(f"batch_size {len(batch)} is smaller than the {self.world} training processes")
        return batch[self.rank:: self.world]

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=_device())
        dist.all_reduce(tensor)
        return float(tensor.item())

    def sum_grads(self, params: list[Any]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        for param in params:
            if param.grad is not None:
                dist.all_reduce(param.grad)

    def decide(self, flag: bool) -> bool:
        """Rank 0's answer, on every rank (e.g. whether to stop)."""
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([1 if flag else 0], device=_device())
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

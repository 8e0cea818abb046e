"""Single-process or torchrun DistributedDataParallel, behind one small context object.

Under ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1 in the environment) every process joins a
process group (NCCL on CUDA, gloo on CPU) and takes one device; otherwise everything degrades to
plain single-process calls, so the training code has no special cases. Only rank 0 writes files and
shows progress bars; metrics are all-reduced so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from frozen_vlm_perception.pipeline import resolve_device


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds the embedding cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def wrap(self, module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """The module in DistributedDataParallel when distributed (parameters synced from rank 0)."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            module, device_ids=ids, find_unused_parameters=find_unused_parameters
        )

    def mean(self, values: dict[str, float], weight: float = 1.0) -> dict[str, float]:
        """Weighted mean of scalar metrics over ranks (weight: e.g. the samples each rank saw)."""
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        packed = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64)
        packed = packed.to(self._comm_device)
        dist.all_reduce(packed)
        total = float(packed[-1])
        return {k: float(v) / max(total, 1e-12) for k, v in zip(keys, packed[:-1].tolist(), strict=True)}

    def broadcast_bool(self, value: bool) -> bool:
        """Rank 0's value on every rank (one decision, e.g. early stopping, for all)."""
        if not self.distributed:
            return bool(value)
        flag = torch.tensor([1 if value else 0], device=self._comm_device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def gather_rows(self, rows: Tensor) -> Tensor:
        """(n_r, ...) rows of every rank -> (sum n_r, ...) on every rank, in rank order."""
        if not self.distributed:
            return rows
        device = self._comm_device
        count = torch.tensor([len(rows)], device=device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        counts = [int(c) for c in counts]
        padded = rows.new_zeros((max(counts), *rows.shape[1:])).to(device)
        padded[: len(rows)] = rows.to(device)
        gathered = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return torch.cat([g[:c] for g, c in zip(gathered, counts, strict=True)]).to(rows.device)

    def shard(self, num: int) -> list[int]:
        """This rank's indices of ``num`` items (strided, so shard sizes differ by at most one)."""
        return list(range(self.rank, num, self.world_size))

    @property
    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun, else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module

"""Data parallelism over torch.distributed, as started by `torchrun`.

`torchrun --nproc_per_node=N -m tasks.phase1` (or phase2) starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK and a rendezvous address in the environment. `init_world()` reads
them and joins the process group: NCCL when CUDA is available (one GPU per local rank),
gloo otherwise. Without torchrun it returns the single-process world, whose collectives
are no-ops, so the trainers have one code path.

The trainers do what DistributedDataParallel does, explicitly: every rank computes the
gradient of its share of the global batch, with the loss normalised by the *global* batch
size, and `all_reduce_grads` sums the gradients (one flat buffer, one all-reduce), so each
rank steps with the full-batch gradient and the replicas stay identical. The DDP module
wrapper is not used because Phase 1's diversity loss depends on statistics of the whole
batch (an average of per-rank losses would be a different loss), and because the model is
called through several methods (embed, stack, head) rather than one forward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n items (sizes differ by at most 1)."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (returns `tensor`)."""
        if self.distributed:
            t = tensor.to(self.device)
            dist.all_reduce(t)
            if t is not tensor:
                tensor.copy_(t)
        return tensor

    def all_reduce_grads(self, params) -> None:
        """Sum every parameter's gradient over ranks (missing gradients count as zero)."""
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params]).to(self.device)
        dist.all_reduce(flat)
        i = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[i : i + n].view_as(p.grad))
            i += n

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""
        if self.distributed:
            for t in list(module.parameters()) + list(module.buffers()):
                data = t.data.to(self.device)
                dist.broadcast(data, 0)
                if data is not t.data:
                    t.data.copy_(data)

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (small picklable values: paths, flags)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_world() -> World:
    """The world torchrun describes in the environment (joined once), else SINGLE."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    name = backend()
    device = torch.device("cpu")
    if name == "nccl":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(name)
    return World(rank, size, device)


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

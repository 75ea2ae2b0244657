"""Scale-out with torchrun: who am I, join the group, take my share of the work, merge on rank 0.

torchrun (python -m torch.distributed.run) starts one process per device and sets RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE. A plain `python -m machinegaze.cli ...` has none of them: world size 1,
nothing to join, every helper below is then a no-op, so the same code runs alone or sharded.

Sharding is contiguous and over whole batches: rank r takes batches [r*B/W, (r+1)*B/W), so every item is
computed in exactly the batch it would be in one process and the merged output is bit-identical.
The process group uses NCCL when the processes compute on CUDA and gloo otherwise (CPU, MPS); objects
are gathered to rank 0 over the same group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch

from machinegaze import GazeError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def on(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise GazeError(f"environment variable {name}={v!r} is not an integer") from None


def world_from_env() -> World:
    """This process's place in a torchrun launch (World() when started without torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    if size < 1 or not 0 <= rank < size:
        raise GazeError(f"RANK={rank} / WORLD_SIZE={size} from the environment do not fit together")
    return World(rank, size, local_rank, local_size)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: Optional[torch.device] = None, timeout_s: float = 1800) -> World:
    """Join the torchrun process group (once) with the backend that fits `device`; World() when not launched
    by torchrun. CUDA processes also make their device current, as NCCL expects."""
    w = world_from_env()
    if not w.on:
        return w
    import torch.distributed as dist

    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(device), timeout=timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), w.local_rank, w.local_size)


def joined() -> World:
    """This process's place in the process group it has joined (init), or World() when it has joined none, so
    library code can shard when the caller set up torchrun and run whole otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    w = world_from_env()
    return World(dist.get_rank(), dist.get_world_size(), w.local_rank, w.local_size)


def finish() -> None:
    """Leave the process group (end of a sharded command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(w: World) -> None:
    if w.on:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# ---------------------------------------------------------------- shards
def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items; shares differ in length by at most one."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} of {size}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_batches(n: int, batch: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) item range of rank's share when n items are processed in batches of `batch`: whole
    batches are dealt out, so every item lands in the same batch as in a single process."""
    batch = max(1, int(batch))
    nb = (n + batch - 1) // batch
    b0, b1 = shard_bounds(nb, rank, size)
    return min(b0 * batch, n), min(b1 * batch, n)


def my_share(items: Sequence, w: World, batch: int = 1) -> Sequence:
    start, stop = shard_batches(len(items), batch, w.rank, w.size)
    return items[start:stop]


# ---------------------------------------------------------------- merging on rank 0
def gather_to_main(obj: Any, w: World) -> Optional[list]:
    """Every rank's `obj` in rank order on rank 0 (None elsewhere); [obj] without torchrun.

    Objects travel pickled between our own processes (torch.distributed.gather_object); tensors should be on
    the CPU. Concatenate the list in rank order to get exactly the one-process result."""
    if not w.on:
        return [obj]
    import torch.distributed as dist

    out: Optional[list] = [None] * w.size if w.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_sum_(t: torch.Tensor, w: World) -> torch.Tensor:
    """Sum `t` over ranks in place (on the device the group's backend uses)."""
    if w.on:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(t: torch.Tensor, w: World, src: int = 0) -> torch.Tensor:
    if w.on:
        import torch.distributed as dist

        dist.broadcast(t, src=src)
    return t


def any_failed(failed: bool, w: World, device: Optional[torch.device] = None) -> bool:
    """True on every rank when `failed` is True on any rank (so all ranks stop together, none hangs)."""
    if not w.on:
        return failed
    t = torch.tensor([1.0 if failed else 0.0], device=device or torch.device("cpu"))
    all_reduce_sum_(t, w)
    return bool(t.item() > 0)


def average_gradients_(params, w: World) -> None:
    """Replace every gradient by its mean over the ranks (one flat all-reduce; a no-op without torchrun).
    Parameters without a gradient on this step are skipped on every rank alike (the same model everywhere)."""
    if not w.on:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum_(flat, w).div_(w.size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()

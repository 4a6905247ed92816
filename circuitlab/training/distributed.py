"""Data parallelism with torch.distributed: several processes (ranks) train one model, each on its share of every
global batch, and average their gradients before the optimizer steps (gloo on CPUs, nccl on GPUs).

Launched by `torchrun --nproc-per-node N -m circuitlab train ...` (or `circuitlab train --nproc N`), which sets
RANK, WORLD_SIZE and the rendezvous variables. circuitlab's determinism is kept: the global batch of a step is still
the pure function of (seed, step) a single process draws, rank r takes its rows r::world, and the gradient is the
mean over ranks of the means over their rows -- the single-process gradient of that batch (up to float rounding of
the sum), for losses that average over rows equally. So a run's trajectory does not depend on the number of ranks,
and `--resume` works with any number of them. Only rank 0 writes (run.json, checkpoints, optimizer state, metrics,
the progress bar) and evaluates; the others read the run it made.

The gradient is averaged by the loop (one all-reduce of all gradients flattened together) rather than by
`DistributedDataParallel`, whose reduction needs the forward pass to go through its wrapper: the grokking step reads
the weights directly (`model.last_position`), so every task works the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitlab.errors import CircuitlabError


@dataclass
class Ranks:
    rank: int
    world: int
    device: str = "cpu"  # where collectives' small tensors live (nccl needs them on the GPU)
    owned: bool = False  # this process group was started here, and is ended by `close`

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks(0, 1)


def from_env(device: torch.device) -> Ranks:
    """The ranks torchrun started (initialising the process group once), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE
    import torch.distributed as dist

    if not dist.is_available():
        raise CircuitlabError("this torch build has no torch.distributed: train with one process")
    owned = not dist.is_initialized()
    if owned:
        # torch._inductor imported after the group starts keeps a reference to it, so `destroy_process_group` no
        # longer frees it and gloo's threads outlive `close` into interpreter shutdown, where they aborted a rank
        # now and then ("terminate called without an active exception"). train() imports it after this point
        # (torch.use_deterministic_algorithms does), so it is imported here first.
        import torch._inductor.config  # noqa: F401

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size(), "cuda" if device.type == "cuda" else "cpu", owned)


def close(ranks: Ranks, finished: bool = True) -> None:
    """End a process group `from_env` started, its gloo threads joined here (left to interpreter shutdown, they can
    abort the process: "terminate called without an active exception"; tests/test_distributed.py checks that none
    is left once train() returns)."""
    if ranks.owned:
        import torch.distributed as dist

        if dist.is_initialized():
            # Every rank reaches the end before any tears its connections down: a rank that destroyed its group
            # while the other was still writing (rank 0 saves the last checkpoint) made gloo abort the other one.
            # Only after a run that ended normally on this rank: after an error the others may never get here.
            if finished:
                try:
                    dist.barrier()
                except RuntimeError:  # a peer already gone: nothing left to wait for
                    pass
            dist.destroy_process_group()


def check_split(rows: int, ranks: Ranks) -> None:
    if rows % ranks.world:
        raise CircuitlabError(f"the global batch has {rows} rows, which {ranks.world} ranks cannot split evenly: "
                              f"choose a batch size divisible by {ranks.world} (or another number of processes)")


def shard(batch, ranks: Ranks):
    """Rank r's rows r::world of a batch (a tensor, or a tuple of tensors with the rows first)."""
    if ranks.world == 1:
        return batch
    if isinstance(batch, tuple):
        return tuple(shard(b, ranks) for b in batch)
    return batch[ranks.rank :: ranks.world]


def average_gradients(params: list[Tensor], ranks: Ranks) -> None:
    """Every parameter's gradient replaced by its mean over the ranks (one all-reduce)."""
    if ranks.world == 1:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ranks.world
    i = 0
    for g in grads:
        g.copy_(flat[i : i + g.numel()].view_as(g))
        i += g.numel()


def mean(value: float, ranks: Ranks) -> float:
    if ranks.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=ranks.device)
    dist.all_reduce(t)
    return float(t[0]) / ranks.world


def broadcast_flag(flag: bool, ranks: Ranks) -> bool:
    """Rank 0's flag on every rank (a stop decided by rank 0's evaluation)."""
    if ranks.world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=ranks.device)
    dist.broadcast(t, 0)
    return bool(t[0])


def broadcast_parameters(model: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's weights on every rank (they start equal anyway: the same seed and the same checkpoint)."""
    if ranks.world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, 0)


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def check_same(model: torch.nn.Module, ranks: Ranks) -> None:
    """Raise unless every rank holds the same weights (a checksum of all parameters, gathered from each rank)."""
    if ranks.world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        mine = torch.stack([torch.cat([p.detach().double().reshape(-1) for p in model.parameters()]).sum(),
                            torch.cat([p.detach().double().reshape(-1) for p in model.parameters()]).abs().sum()])
    got = [torch.zeros_like(mine) for _ in range(ranks.world)]
    dist.all_gather(got, mine.to(ranks.device))
    if any(not torch.equal(g.cpu(), got[0].cpu()) for g in got):
        raise CircuitlabError(f"the {ranks.world} ranks hold different weights after training (checksums "
                              f"{[tuple(round(float(x), 6) for x in g) for g in got]}): report this as a bug")

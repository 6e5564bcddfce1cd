"""One or many processes: torchrun's environment, the process group and collectives.

Launch with PyTorch's own launcher, on one machine or many::

    torchrun --nproc_per_node=8 -m specdet.train.cli --arch ... --data ...
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 -m specdet.train.cli ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain ``detect-train`` has
none of them and runs as a world of one without a process group. NCCL joins
GPU processes and gloo CPU ones (the CPU tests use gloo, two processes).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from specdet.errors import SpecdetError


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device
    grouped: bool  # a process group is up (launched by torchrun)
    threads_before: int  # torch's CPU thread count before setup, restored by teardown

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None, threads: int | None = None) -> World:
    """Join torchrun's process group if launched by it; pick this process's device.

    ``threads``: intra-op CPU threads. On a CPU shared with other jobs, fewer
    threads than cores can be several times faster: every parallel op waits
    for its slowest thread, and a thread that loses its core stalls them all.
    """
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SpecdetError("--device cuda asked for, but PyTorch sees no GPU: use --device cpu")
        # One GPU per process, by local rank: what torchrun's nproc_per_node means.
        chosen = torch.device("cuda", local_rank) if launched else torch.device(device or "cuda")
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device(kind)
    if launched:
        torch_dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    return World(rank, local_rank, size, chosen, launched, threads_before)


def env_rank() -> int:
    """This process's rank as torchrun set it; 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


def teardown(world: World) -> None:
    torch.set_num_threads(world.threads_before)
    if world.grouped and torch_dist.is_initialized():
        # Leave together: a rank that destroys its group while another still talks to it
        # aborts that one in gloo ("terminate called without an active exception"). Bounded,
        # so a rank that died does not keep the others waiting.
        try:
            torch_dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
        except RuntimeError:
            pass
        torch_dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """DistributedDataParallel over the parameters that train now; the model itself in a world of one.

    DDP records which parameters require gradients when it is built, so the
    loop wraps the model again whenever a training stage freezes or frees some.
    """
    if not world.grouped:
        return model
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def gather(values: list[Any], world: World) -> list[Any]:
    """Every process's list, concatenated in rank order."""
    if not world.grouped:
        return list(values)
    parts: list[list[Any]] = [[] for _ in range(world.size)]
    torch_dist.all_gather_object(parts, values)
    return [value for part in parts for value in part]


def sum_across(values: dict[str, float], world: World) -> dict[str, float]:
    """Each value summed over processes (float64, on CPU: these are a handful of numbers)."""
    if not world.grouped:
        return dict(values)
    names = sorted(values)
    tensor = torch.tensor([values[name] for name in names], dtype=torch.float64)
    if world.device.type == "cuda":
        tensor = tensor.to(world.device)
    torch_dist.all_reduce(tensor)
    return dict(zip(names, tensor.cpu().tolist()))


def barrier(world: World) -> None:
    if world.grouped:
        torch_dist.barrier()

"""Two CPU processes with gloo: DistributedDataParallel averages gradients, and torchrun runs detect-train."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

# Spawned children import this module to find _step: its top level imports only
# what they need (not the detectors, whose timm and transformers take seconds).
from specdet.train import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    world = distributed.setup("cpu", threads=1)
    try:
        assert world.grouped and world.size == 2
        torch.manual_seed(0)
        model = torch.nn.Sequential(  # convolution, BatchNorm and dropout, like the detectors
            torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1),
        )
        x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(rank))  # each rank its own data
        y = torch.tensor([0.0, 1.0, float(rank)])

        def loss(net: torch.nn.Module) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(net(x).squeeze(1), y)

        local = copy.deepcopy(model)
        torch.manual_seed(100 + rank)  # the same dropout masks in both passes
        loss(local).backward()
        local_grads = [p.grad for p in local.parameters()]

        net = distributed.wrap(model, world)
        torch.manual_seed(100 + rank)
        loss(net).backward()
        everyone = distributed.gather([local_grads], world)
        for i, p in enumerate(model.parameters()):
            expected = (everyone[0][i] + everyone[1][i]) / 2
            torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7)

        torch.optim.AdamW(model.parameters(), lr=1e-2).step()
        checksums = distributed.gather([float(sum(p.double().sum() for p in model.parameters()))], world)
        assert checksums[0] == checksums[1]
        assert distributed.sum_across({"n": 1.0}, world) == {"n": 2.0}
    finally:
        distributed.teardown(world)


def test_two_gloo_processes_average_gradients_and_stay_in_step():
    # spawn, not fork: a forked child cannot run autograd once the parent's autograd threads exist.
    mp.spawn(_step, args=(2, _free_port()), nprocs=2, join=True)


def test_torchrun_trains_with_two_processes(tmp_path):
    from specdet.models import checkpoint
    from specdet.train.make_data import make_demo_data

    make_demo_data(tmp_path / "demo", train_crops=8, val_crops=4, size=64, seed=0)
    out = tmp_path / "ddp.pth"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "specdet.train.cli", "--arch", "dual_branch_tiny", "--set", "input_size=64", "--set", "freq_grid=2",
        "--data", str(tmp_path / "demo" / "train"), "--val", str(tmp_path / "demo" / "val"), "-o", str(out),
        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    entry = json.loads(out.with_name("ddp.log.jsonl").read_text())
    assert entry["train"]["images"] == 16  # 2 processes x 2 batches of 4
    assert entry["validation"]["images"] == 8  # each process scored half, all were gathered
    assert checkpoint.load(out).metadata["training"]["epochs"] == 1
    assert run.stdout.count("| **mean** |") == 1  # the summary is printed once, by rank 0

"""Host-device transfers timed on their own: a batch's uint8 crops in from pinned memory, its scores back out.

detect-bench times a GPU variant's work on inputs already on the device
(:mod:`~specdet.benchmarks.timing`, blocks of back-to-back calls); what it
costs to move a batch is measured here, apart, the way the input pipeline
moves it: ``[N, crop, crop, 3]`` uint8 from a pinned buffer (a quarter of
the float32 bytes; normalised on the device), and the ``[2, N]`` float32
logits and probabilities into a pinned buffer. Both copies are asynchronous;
a block of them sits between one pair of CUDA events. Files to
probabilities, with these copies overlapping decoding, is
:mod:`~specdet.benchmarks.end_to_end`'s figure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from specdet.benchmarks import stats, timing


def copies(host_crops, device_crops, device_scores, host_scores) -> dict[str, Callable[[], object]]:
    """The two timed calls: each one asynchronous copy between a pinned host buffer and the device, nothing else."""
    return {
        "host_to_device_uint8_crops": lambda: device_crops.copy_(host_crops, non_blocking=True),
        "device_to_host_scores": lambda: host_scores.copy_(device_scores, non_blocking=True),
    }


def buffers(torch, batch: int, crop: int, device) -> tuple[Any, Any, Any, Any]:
    """Pinned host and device buffers of one batch: (host crops, device crops, device scores, host scores)."""
    shape = (batch, crop, crop, 3)
    host_crops = torch.zeros(shape, dtype=torch.uint8, pin_memory=True)
    scores = (2, batch)
    return (host_crops, torch.empty(shape, dtype=torch.uint8, device=device),
            torch.zeros(scores, dtype=torch.float32, device=device), torch.empty(scores, dtype=torch.float32, pin_memory=True))


def measure(batch: int, crop: int, plan: timing.Plan, device="cuda") -> list[dict[str, Any]]:
    """One row per direction: bytes, median ms per copy over the plan's blocks, spread between blocks, GB/s."""
    import torch

    host_crops, device_crops, device_scores, host_scores = buffers(torch, batch, crop, device)
    calls = copies(host_crops, device_crops, device_scores, host_scores)
    sizes = {"host_to_device_uint8_crops": host_crops.numel(), "device_to_host_scores": host_scores.numel() * 4}
    subjects = [timing.Subject(name, call, timing.CudaEventClock(), calls=plan.device_calls) for name, call in calls.items()]
    rows = []
    for subject, samples in zip(subjects, timing.run(subjects, plan)):
        median = stats.percentile(samples.seconds, 50)
        rows.append({"batch": batch, "direction": subject.name, "bytes": sizes[subject.name], "median_ms": median * 1e3,
                     "blocks": len(samples.seconds), "calls_per_block": samples.calls_per_sample,
                     "block_spread": timing.block_spread(samples.seconds),
                     "gb_per_s": sizes[subject.name] / median / 1e9 if median > 0 else None})
    return rows

"""A variant loaded: its runner, what loading cost, and the facts of what runs, ready to time."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from specdet.benchmarks import timing
from specdet.benchmarks.variant_facts import describe
from specdet.benchmarks.variants import Variant
from specdet.runtime import Runner


@dataclasses.dataclass
class Loaded:
    """A variant with its artifact loaded, ready to time."""

    variant: Variant
    runner: Runner
    facts: dict[str, Any]  # what exactly runs: library versions, provider, precision, FFT mode, threads
    load_seconds: float
    load_rss_bytes: int | None  # rise of the process's resident set while loading (CPU)

    @property
    def id(self) -> str:
        return f"{self.variant.name}:{self.runner.artifact.name}"

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.runner.input_spec().dtype)

    def clock(self) -> timing.Clock:
        return timing.CudaEventClock() if self.variant.device == "cuda" else timing.MonotonicClock()

    def memory_probe(self) -> timing.MemoryProbe:
        if self.variant.device == "cpu":
            return timing.ProcessRss()
        if self.variant.backend == "torch":
            return timing.CudaAllocator()
        return timing.NoProbe()  # onnxruntime's and TensorRT's GPU memory is outside torch's allocator


def load(variant: Variant, artifact: Path, threads: int | None) -> Loaded:
    """``artifact`` loaded as ``variant`` runs it, with the seconds and (on the CPU) the memory loading took."""
    before = timing.current_rss()
    start = time.perf_counter()
    runner = variant.load(artifact, threads)
    seconds = time.perf_counter() - start
    after = timing.current_rss()
    rss = None if variant.device != "cpu" or before is None or after is None else max(0, after - before)
    return Loaded(variant, runner, describe(variant, runner, threads), seconds, rss)

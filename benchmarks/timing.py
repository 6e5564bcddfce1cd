"""Warm-up, timing and memory of calls: the one timing implementation of the benchmarks.

Runners do not time themselves; this module times them, the same way for
all. Several subjects (a variant on one batch) are timed side by side: after
the warm-up rounds, each round calls every subject once, in an order that
rotates from round to round, so that drifts of the machine (other load,
clock frequency, cache state) fall on all of them alike. A round count
(``iters``) or a time budget (``seconds``) ends the timing.

``interleave=False`` times each subject on its own instead (all its rounds,
then the next one's): on a machine with few cores, a backend whose thread
pool spins after a call can slow whichever subject runs next, and comparing
the two orders shows whether it does.

Each subject brings its own clock (a monotonic clock for work on the CPU,
CUDA events for work on the GPU) and its own memory probe (the process's
resident set on the CPU, the allocator's peak on the GPU). Memory is read
around every call, warm-up included (arenas grow on the first call of a new
shape), but outside the timed interval.

A sample is one block of ``Subject.calls`` back-to-back calls between one
pair of clock readings, divided by the count. On the GPU a block of many
calls (``Plan.device_calls``, 50 in the GPU suite) measures the device's
time per call: the host queues call after call with no wait between them,
so its launch cost overlaps the GPU's work instead of being timed, and the
one host wait comes after the block's end event. The spread between blocks
(:func:`block_spread`) says how steady the figure is.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from specdet.benchmarks import stats

MIN_ITERATIONS = 3  # a --seconds budget still times every subject this often


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long to time: ``warmup`` untimed rounds, then ``iters`` rounds or ``seconds`` of rounds."""

    warmup: int = 2
    iters: int | None = 10
    # Rounds go on until the slowest subject has been timed this long (at least
    # MIN_ITERATIONS rounds), so a batch size takes at most about seconds x subjects.
    seconds: float | None = None
    # False: each subject timed on its own, one after the other. For checking
    # whether one backend disturbs the next (thread pools that spin after a call).
    interleave: bool = True
    # Back-to-back calls per sample for subjects timed on the device (GPU work queued without a host wait);
    # 1 for work on the CPU, where every call returns its result.
    device_calls: int = 1

    def __post_init__(self):
        if self.warmup < 0:
            raise ValueError(f"warm-up of {self.warmup} rounds: give 0 or more")
        if (self.iters is None) == (self.seconds is None):
            raise ValueError("give either iters or seconds")
        if self.iters is not None and self.iters < 1:
            raise ValueError(f"{self.iters} iterations: give 1 or more")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"{self.seconds} seconds: give a positive time")
        if self.device_calls < 1:
            raise ValueError(f"{self.device_calls} calls per device sample: give 1 or more")

    def describe(self) -> str:
        budget = f"{self.iters} iterations" if self.iters is not None else f"{self.seconds:g} s per subject"
        order = "interleaved in rotating order" if self.interleave else "each variant on its own, in turn"
        blocks = f"; on the GPU each sample a block of {self.device_calls} back-to-back calls" if self.device_calls > 1 else ""
        return f"{self.warmup} warm-up rounds, then {budget}, {order}{blocks}"


class Clock(Protocol):
    name: str

    def measure(self, call: Callable[[], object], calls: int = 1) -> float:
        """Seconds per call of ``calls`` back-to-back calls of ``call()``, read once before and once after."""


class MonotonicClock:
    """Wall time on the CPU: ``time.perf_counter_ns`` around the calls."""

    name = "monotonic"

    def measure(self, call: Callable[[], object], calls: int = 1) -> float:
        start = time.perf_counter_ns()
        for _ in range(calls):
            call()
        return (time.perf_counter_ns() - start) * 1e-9 / calls


class CudaEventClock:
    """Time on the GPU's timeline: one CUDA event recorded before the block of calls, one after, then one host wait.

    ``cuda`` is ``torch.cuda`` (a stub in the tests, which check that nothing
    waits between the two events).
    """

    name = "cuda_events"

    def __init__(self, cuda=None):
        if cuda is None:
            import torch

            cuda = torch.cuda
        self._cuda = cuda

    def measure(self, call: Callable[[], object], calls: int = 1) -> float:
        start = self._cuda.Event(enable_timing=True)
        end = self._cuda.Event(enable_timing=True)
        # Work queued before the block (the previous subject's) must not land inside it.
        self._cuda.synchronize()
        start.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3 / calls


class MemoryProbe(Protocol):
    name: str

    def start(self) -> None:
        """Reset the peak before a call."""

    def stop(self) -> tuple[int, int] | None:
        """``(peak bytes, peak bytes above the level at start)`` since :meth:`start`, or None."""


class ProcessRss:
    """The process's resident set: peak (VmHWM) reset before each call through /proc/self/clear_refs.

    Where the peak cannot be reset (not Linux, or a kernel that refuses), the
    probe reports nothing rather than the lifetime peak of the process.
    """

    name = "process_rss"

    def __init__(self):
        self._before = 0
        self._works = _reset_hwm() and _status_kb("VmHWM") is not None

    def start(self) -> None:
        if self._works:
            _reset_hwm()
            self._before = _status_kb("VmRSS") or 0

    def stop(self) -> tuple[int, int] | None:
        if not self._works:
            return None
        peak = _status_kb("VmHWM") or 0
        return peak * 1024, max(0, peak - self._before) * 1024


def current_rss() -> int | None:
    """Resident set of this process now, in bytes (Linux), or None."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class CudaAllocator:
    """PyTorch's CUDA caching allocator: its peak of allocated bytes, reset before each call."""

    name = "cuda_allocator"

    def __init__(self):
        import torch

        self._cuda = torch.cuda
        self._before = 0

    def start(self) -> None:
        self._cuda.reset_peak_memory_stats()
        self._before = self._cuda.memory_allocated()

    def stop(self) -> tuple[int, int] | None:
        peak = self._cuda.max_memory_allocated()
        return peak, max(0, peak - self._before)


class NoProbe:
    """For backends whose memory no probe here can see (their own GPU allocators)."""

    name = "not_measured"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        return None


@dataclasses.dataclass
class Subject:
    """One thing to time: a call with no arguments (a variant on a fixed batch)."""

    name: str
    call: Callable[[], object]
    clock: Clock = dataclasses.field(default_factory=MonotonicClock)
    memory: MemoryProbe = dataclasses.field(default_factory=NoProbe)
    calls: int = 1  # back-to-back calls per sample (a block); Plan.device_calls for work on the device


@dataclasses.dataclass
class Samples:
    seconds: list[float]  # per call, one per timed sample (a block of calls_per_sample calls)
    first_call_s: float | None  # the first call, a warm-up one when there is one (graph compilation, arena growth, ...)
    peak_bytes: int | None  # largest peak over all calls, warm-up included
    peak_increase_bytes: int | None  # largest rise above the level before a call
    clock: str
    memory: str
    calls_per_sample: int = 1


def block_spread(seconds: Sequence[float]) -> float | None:
    """(slowest - fastest) / median of the samples: how far the blocks disagree; None for fewer than 2."""
    if len(seconds) < 2:
        return None
    middle = stats.percentile(seconds, 50)
    return (max(seconds) - min(seconds)) / middle if middle > 0 else None


def run(subjects: Sequence[Subject], plan: Plan, progress: Callable[[int], None] | None = None) -> list[Samples]:
    """Time ``subjects`` as ``plan`` says; one :class:`Samples` per subject, in order.

    Interleaved (the default), all subjects share the rounds; sequential,
    each gets its own warm-up and rounds in turn. ``progress(1)`` follows
    every call.
    """
    results = [Samples([], None, None, None, s.clock.name, s.memory.name, s.calls) for s in subjects]
    groups = [list(range(len(subjects)))] if plan.interleave else [[i] for i in range(len(subjects))]
    for group in groups:
        if group:
            _rounds([subjects[i] for i in group], [results[i] for i in group], plan, progress)
    return results


def _rounds(subjects: list[Subject], results: list[Samples], plan: Plan, progress) -> None:
    def one_round(number: int, timed: bool) -> None:
        shift = number % len(subjects)
        order = list(range(len(subjects)))
        for i in order[shift:] + order[:shift]:
            subject, result = subjects[i], results[i]
            subject.memory.start()
            # Warm-up rounds are single calls (compilation, capture, arenas), timed rounds whole blocks.
            elapsed = subject.clock.measure(subject.call, subject.calls if timed else 1)
            _record_memory(result, subject.memory.stop())
            if result.first_call_s is None:
                result.first_call_s = elapsed
            if timed:
                result.seconds.append(elapsed)
            if progress is not None:
                progress(1)

    for number in range(plan.warmup):
        one_round(number, timed=False)
    rounds = 0
    while not _done(plan, rounds, results):
        one_round(plan.warmup + rounds, timed=True)
        rounds += 1


def _done(plan: Plan, rounds: int, results: list[Samples]) -> bool:
    if plan.iters is not None:
        return rounds >= plan.iters
    slowest = max(sum(r.seconds) * r.calls_per_sample for r in results)
    return rounds >= MIN_ITERATIONS and slowest >= plan.seconds


def _record_memory(result: Samples, reading: tuple[int, int] | None) -> None:
    if reading is None:
        return
    peak, increase = reading
    result.peak_bytes = max(peak, result.peak_bytes or 0)
    result.peak_increase_bytes = max(increase, result.peak_increase_bytes or 0)

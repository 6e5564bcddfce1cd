"""Summary statistics of latency samples: the one place percentiles are defined.

Percentiles interpolate linearly between the closest ranks (Hyndman and
Fan's type 7, NumPy's and Excel's default): the q-th percentile of n sorted
samples sits at rank ``(n - 1) * q / 100``. With few samples the tails are
interpolated, not observed: p99 of 10 samples lies between the two largest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ``samples``, linearly interpolated."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(samples: Sequence[float]) -> float:
    if not samples:
        raise ValueError("mean of no samples")
    return math.fsum(samples) / len(samples)


def stdev(samples: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator); 0 for a single sample."""
    if len(samples) < 2:
        return 0.0
    centre = mean(samples)
    return math.sqrt(math.fsum((s - centre) ** 2 for s in samples) / (len(samples) - 1))


def summarize(seconds: Sequence[float], batch: int) -> dict[str, float | int]:
    """Latency figures of one (variant, batch size) in milliseconds, and throughput.

    ``images_per_s`` is ``batch / median``: the median resists the bursts of
    other load a shared machine adds, which a mean-based rate would not.
    """
    ms = [s * 1e3 for s in seconds]
    median = percentile(ms, 50)
    return {
        "iterations": len(ms),
        "median_ms": median,
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": mean(ms),
        "std_ms": stdev(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "images_per_s": batch / (median / 1e3) if median > 0 else math.inf,
    }

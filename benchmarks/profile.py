"""Where the time goes: each variant's time per operator type, from its backend's own profiler.

- torch variants: ``torch.profiler`` around one call, self CPU time per aten op;
- onnxruntime: a second session on the same file with the runner's own
  session options plus profiling, kernel time per ONNX op type;
- variants on a GPU and other backends: not profiled (None).

Shares are of the summed operator time of one call (after one warm-up
call), so they add up to 1 over all ops; the list keeps the largest.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

from specdet.benchmarks.loading import Loaded


def op_shares(item: Loaded, batch: np.ndarray, top: int = 8) -> list[dict] | None:
    profiler = _PROFILERS.get(item.variant.backend)
    if profiler is None or item.variant.device != "cpu":  # GPU kernels: use the vendor's profiler
        return None
    times = profiler(item, batch.astype(item.input_dtype, copy=False))
    total = sum(times.values())
    if not total:
        return None
    return [{"op": op, "share": t / total, "ms": t / 1e3} for op, t in times.most_common(top)]


def _torch(item: Loaded, batch: np.ndarray) -> Counter:
    from torch.profiler import ProfilerActivity, profile

    item.runner.infer(batch)
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        item.runner.infer(batch)
    times = Counter()
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            times[event.key] += event.self_cpu_time_total  # microseconds
    return times


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Kineto, torch's profiler library, logs start, stop and a GPU probe from C++ straight to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _onnxruntime(item: Loaded, batch: np.ndarray) -> Counter:
    import onnxruntime

    session = item.runner.session  # the runner's own, for its options and providers
    options = session.get_session_options()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="detect-bench-profile-") as folder:
        options.profile_file_prefix = os.path.join(folder, "ort")
        profiled = onnxruntime.InferenceSession(str(item.runner.artifact), options, providers=session.get_providers())
        feed = {profiled.get_inputs()[0].name: batch}
        profiled.run(None, feed)
        profiled.run(None, feed)
        with open(profiled.end_profiling()) as file:
            events = json.load(file)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    times = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= last_start:
            times[event["args"]["op_name"]] += event["dur"]  # microseconds
    return times


_PROFILERS: dict[str, Callable[[Loaded, np.ndarray], Counter]] = {"torch": _torch, "onnxruntime": _onnxruntime}

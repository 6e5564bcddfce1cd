"""What the benchmark ran on: CPU model, cores, clock, instruction sets, memory, GPUs.

The clock is read from the kernel: the highest frequency cpufreq reports,
or, inside a virtual machine that exposes no cpufreq, the "cpu MHz" of
/proc/cpuinfo (the nominal frequency; turbo can run above it). The CPU's
arithmetic peak per precision, built on these, is in :mod:`peaks`.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

_SIMD_FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx_vnni", "avx2", "fma", "f16c")


def describe() -> dict:
    cpu = cpu_info()
    return {
        "cpu": cpu["model"],
        "cores": cpu["cores"],
        "logical_cpus": cpu["logical_cpus"],
        "clock_mhz": cpu["clock_mhz"],
        "clock_source": cpu["clock_source"],
        "simd": cpu["simd"],
        "memory_gb": _memory_gb(),
        "gpus": gpu_info(),
        "gpu_math": gpu_math(),
        "system": platform.platform(),
    }


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The CPU as ``cpuinfo`` (default: this machine's /proc/cpuinfo) describes it, first CPU's flags."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    model = platform.processor() or platform.machine()
    vendor = family = mhz = None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            model = value
        elif key == "vendor_id" and vendor is None:
            vendor = value
        elif key == "cpu family" and family is None:
            family = value  # with vendor: which microarchitecture's vector units (AMD Zen 4 is 25)
        elif key == "cpu MHz" and mhz is None:
            mhz = float(value)
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not line.strip() and core is not None:
            cores.add((physical or "0", core))
            physical = core = None
    if core is not None:
        cores.add((physical or "0", core))
    logical = os.cpu_count() or 1
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    if max_khz.isdigit():
        clock, source = int(max_khz) / 1e3, "cpufreq cpuinfo_max_freq"
    elif mhz is not None:
        clock, source = mhz, "/proc/cpuinfo cpu MHz (nominal; no cpufreq in this machine)"
    else:
        clock, source = None, "unknown"
    return {
        "model": model,
        "vendor": vendor,
        "family": family,
        "cores": len(cores) or logical,
        "logical_cpus": logical,
        "clock_mhz": clock,
        "clock_source": source,
        "simd": [f for f in _SIMD_FLAGS if f in flags],
    }


def measured_sgemm(size: int = 1024, seconds: float = 0.5) -> dict:
    """What an FP32 matrix product reaches here: torch.mm of two ``size`` x ``size`` matrices, best call.

    On the threads torch uses now. A practical ceiling beside the textbook
    peak: the models spend most of their time in such products, and the
    real clock (turbo, or a busy machine) shows in it.
    """
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best, calls, start = float("inf"), 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
        calls += 1
    return {
        "flops_per_s": 2 * size**3 / best,
        "threads": torch.get_num_threads(),
        "method": f"torch.mm FP32 {size}x{size}, fastest of {calls} calls",
    }


def gpu_info() -> list[dict]:
    """GPUs that torch sees (empty on a machine without CUDA)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({
            "name": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        })
    return gpus


def gpu_math() -> dict | None:
    """torch's process-wide settings that change what FP32 work on a GPU computes and how fast: TF32 for matrix
    products and for cuDNN convolutions (torch's defaults: off and on), cuDNN's autotuning and determinism.
    None where torch sees no GPU. A variant that sets TF32 itself says so in its precision (fp32, fp32-tf32)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "matmul_allow_fp16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_version": torch.backends.cudnn.version(),
        # torch >= 2.9's per-backend precision settings, where this torch has them ("tf32", "ieee", "none")
        "matmul_fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", None),
        "cudnn_conv_fp32_precision": getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
    }


def device_label(machine: dict) -> str:
    """Short tag for file names: ``cpu`` or ``gpu`` plus the first GPU's name."""
    if machine["gpus"]:
        name = machine["gpus"][0]["name"].lower()
        for word in ("nvidia", "geforce", "tesla"):
            name = name.replace(word, "")
        return "gpu-" + "-".join(name.split())
    return "cpu"


def _memory_gb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""

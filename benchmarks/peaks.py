"""The CPU's theoretical peak per precision (FP32, BF16, INT8), from the instruction sets /proc/cpuinfo lists;
the GPU's FP16 tensor-core peak and memory bandwidth from a table of datasheet figures (:func:`gpu_peaks`).

One formula for all three::

    cores x multiply-adds per instruction x instructions per cycle x 2 ops per multiply-add x clock

per core and cycle (a multiply-add counts as 2 operations, as for FP32 FLOPs):

- FP32: one FMA per 32-bit lane: 16 lanes with AVX-512 (avx512f), 8 with
  AVX2, 4 with SSE; 2 FMA instructions per cycle (Intel since Haswell, AMD
  since Zen 2; some Xeon Silver/Bronze have one AVX-512 unit, which the flags
  do not show). AMD Zen 4 (family 25 with avx512f) runs a 512-bit
  instruction as two 256-bit halves on its two 256-bit pipes: 1 per cycle.
- BF16: avx512_bf16's VDPBF16PS does 2 BF16 multiply-adds per FP32 lane
  (2x FP32); AMX (amx_bf16) TDPBF16PS does 16x16x32 multiply-adds in 16
  cycles, 512 per cycle per core (Intel's optimisation manual). Without
  either, BF16 is computed by converting to FP32: the FP32 peak.
- INT8: avx512_vnni's (or avx_vnni's, 256-bit) VPDPBUSD does 4 u8 x s8
  multiply-adds per 32-bit lane (4x FP32); AMX (amx_int8) TDPBUSD does
  16x16x64 in 16 cycles, 1024 per cycle per core. AVX2 without VNNI needs
  three instructions (VPMADDUBSW, VPMADDWD, VPADDD) for what VPDPBUSD does in
  one: 4/3x FP32.

The clock is :func:`machine.cpu_info`'s (the nominal one in a virtual
machine: turbo may run above it). Each figure carries its formula.
"""

from __future__ import annotations

from specdet.benchmarks import machine

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")

# AMX tiles: multiply-adds per cycle per core (16x16x32 BF16 / 16x16x64 INT8 in 16 cycles).
_AMX_MACS = {"bf16": 512, "int8": 1024}
_ZEN4_FAMILY = "25"

# A row's precision (variant facts) -> the peak it is measured against. FP16 on these CPUs (no avx512_fp16
# in the list above) runs as FP32 after casts (ONNX Runtime's CPU provider inserts them): the FP32 peak.
_ROW_PEAK = {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "autocast-bf16": "bf16", "int8": "int8", "int8+bf16": "int8"}


def isa(cpu: dict) -> list[str]:
    """The instruction sets that set a peak, of those the CPU lists."""
    return [flag for flag in ISA_FLAGS if flag in cpu["simd"]]


def cpu_peaks(cpu: dict | None = None) -> dict:
    """The FP32 peak (``flops_per_s``, ``formula``, ``assumptions``) and the peak of each precision."""
    cpu = cpu or machine.cpu_info()
    flags = set(cpu["simd"])
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 1 if lanes == 16 and cpu.get("vendor") == "AuthenticAMD" and cpu.get("family") == _ZEN4_FAMILY else 2
    fma = "fma" in flags or "avx512f" in flags
    width = f"{lanes * 32}-bit"
    fp32_unit = "FMA" if fma else "multiply or add (no FMA)"
    per_precision = {"fp32": _peak(cpu, lanes * (1 if fma else 0.5), per_cycle, f"{width} {fp32_unit}")}
    if "amx_bf16" in flags:
        per_precision["bf16"] = _peak(cpu, _AMX_MACS["bf16"], 1, "AMX TDPBF16PS (16x16x32 per 16 cycles)")
    elif "avx512_bf16" in flags:
        per_precision["bf16"] = _peak(cpu, 2 * lanes, per_cycle, f"{width} VDPBF16PS")
    else:
        per_precision["bf16"] = {**per_precision["fp32"], "instruction": "none: BF16 converted to FP32"}
    if "amx_int8" in flags:
        per_precision["int8"] = _peak(cpu, _AMX_MACS["int8"], 1, "AMX TDPBUSD (16x16x64 per 16 cycles)")
    elif "avx512_vnni" in flags and lanes == 16:
        per_precision["int8"] = _peak(cpu, 4 * lanes, per_cycle, f"{width} VPDPBUSD")
    elif "avx_vnni" in flags:
        per_precision["int8"] = _peak(cpu, 4 * 8, 2, "256-bit VPDPBUSD")
    else:
        per_precision["int8"] = _peak(cpu, 4 * lanes / 3, per_cycle,
                                      f"{width} VPMADDUBSW+VPMADDWD+VPADDD (no VNNI: 3 instructions)")
    fp32 = per_precision["fp32"]
    zen4 = " (AMD Zen 4: 512-bit as two 256-bit halves)" if per_cycle == 1 and lanes == 16 else ""
    return {
        "flops_per_s": fp32["ops_per_s"],
        "formula": fp32["formula"],
        "assumptions": f"{per_cycle} vector instruction(s) per cycle per core{zen4}; clock from "
        f"{cpu['clock_source']}; every core busy; see specdet/benchmarks/peaks.py",
        "isa": isa(cpu),
        "per_precision": per_precision,
    }


def row_precision(precision: str | None) -> str | None:
    """The peak (fp32, bf16, int8) a row of this precision is measured against; None: unknown."""
    return _ROW_PEAK.get(precision or "")


def _peak(cpu: dict, macs: float, per_cycle: int, instruction: str) -> dict:
    clock = cpu["clock_mhz"]
    ops = None if clock is None else cpu["cores"] * macs * per_cycle * 2 * clock * 1e6
    return {
        "ops_per_s": ops,
        "formula": f"{cpu['cores']} cores x {macs:g} multiply-adds x {per_cycle}/cycle x 2 ops "
        f"x {'?' if clock is None else round(clock)} MHz",
        "instruction": instruction,
    }


# ---- GPUs -----------------------------------------------------------------------------------------

# Dense FP16 tensor-core FLOP/s (FP32 accumulate, no sparsity) and HBM/GDDR bandwidth, from NVIDIA's datasheets,
# by a fragment of torch.cuda.get_device_name(); the first fragment found wins (H100 PCIe before H100, A100 before A10).
_GPU_PEAKS = (
    ("h200 nvl", 835e12, 4.8e12), ("h200", 989.5e12, 4.8e12),
    ("h100 pcie", 756e12, 2.0e12), ("h100 nvl", 835e12, 3.9e12), ("h100", 989.5e12, 3.35e12),
    ("b200", 2250e12, 8.0e12),
    ("a100-sxm4-80gb", 312e12, 2.039e12), ("a100 80gb pcie", 312e12, 1.935e12), ("a100", 312e12, 1.555e12),
    ("l40s", 362e12, 0.864e12), ("l4", 121e12, 0.3e12), ("a10", 125e12, 0.6e12), ("t4", 65e12, 0.32e12),
)


def gpu_peaks(name: str | None) -> dict | None:
    """The GPU's FP16 tensor-core peak and memory bandwidth (datasheet figures), or None for a GPU not listed."""
    if not name:
        return None
    lowered = name.lower()
    for fragment, fp16_tensor, bandwidth in _GPU_PEAKS:
        if fragment in lowered:
            return {"gpu": name, "fp16_tensor_flops_per_s": fp16_tensor, "memory_bytes_per_s": bandwidth,
                    "source": f"NVIDIA datasheet for '{fragment}': dense FP16 tensor FLOP/s (FP32 accumulate), "
                              "memory bandwidth; see specdet/benchmarks/peaks.py"}
    return None

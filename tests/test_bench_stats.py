"""detect-bench's numbers: percentiles and summaries, the timing loop, FLOPs, the CPU's peak."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from specdet.benchmarks import bench, flops, machine, peaks, stats, timing

# ---- percentiles and summaries ------------------------------------------------------


@pytest.mark.parametrize(
    "q, expected",
    [(0, 1.0), (50, 5.5), (90, 9.1), (99, 9.91), (100, 10.0), (25, 3.25)],
)
def test_percentile_of_one_to_ten(q, expected):
    # rank (n - 1) * q / 100 on 1..10: p90 at rank 8.1 -> 9 + 0.1 * (10 - 9)
    assert stats.percentile([7, 3, 10, 1, 5, 2, 9, 4, 8, 6], q) == pytest.approx(expected)


def test_percentile_matches_numpy_default():
    samples = np.random.default_rng(0).lognormal(size=37).tolist()
    for q in (1, 10, 50, 90, 99):
        assert stats.percentile(samples, q) == pytest.approx(np.percentile(samples, q))


def test_percentile_edge_cases():
    assert stats.percentile([4.0], 99) == 4.0
    assert stats.percentile([2.0, 4.0], 50) == 3.0
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summarize_in_milliseconds():
    seconds = [0.010, 0.012, 0.011, 0.030, 0.009]
    s = stats.summarize(seconds, batch=8)
    ms = [x * 1e3 for x in seconds]
    assert s["iterations"] == 5
    assert s["median_ms"] == pytest.approx(11.0)
    assert s["mean_ms"] == pytest.approx(statistics.mean(ms))
    assert s["std_ms"] == pytest.approx(statistics.stdev(ms))  # sample standard deviation
    assert s["p90_ms"] == pytest.approx(np.percentile(ms, 90))
    assert s["p99_ms"] == pytest.approx(np.percentile(ms, 99))
    assert (s["min_ms"], s["max_ms"]) == pytest.approx((9.0, 30.0))
    assert s["images_per_s"] == pytest.approx(8 / 0.011)
    assert stats.summarize([0.5], batch=1)["std_ms"] == 0.0


# ---- the timing loop -------------------------------------------------------------


class FakeClock:
    """Each call "takes" a fixed time per subject, and the order of calls is logged."""

    name = "monotonic"

    def __init__(self, log, name, seconds):
        self.log, self.subject, self.seconds = log, name, seconds

    def measure(self, call, calls=1):
        for _ in range(calls):
            call()
        self.log.append(self.subject)
        return self.seconds


def _subjects(log, times):
    return [timing.Subject(name, lambda: None, FakeClock(log, name, t)) for name, t in times.items()]


def test_interleaved_rounds_rotate_and_skip_warmup():
    log = []
    subjects = _subjects(log, {"a": 0.1, "b": 0.2, "c": 0.3})
    calls = []
    results = timing.run(subjects, timing.Plan(warmup=1, iters=3), progress=calls.append)
    assert log == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert [len(r.seconds) for r in results] == [3, 3, 3]  # the warm-up round is not kept
    assert results[1].seconds == [0.2, 0.2, 0.2] and results[1].first_call_s == 0.2
    assert len(calls) == 12


def test_sequential_times_each_subject_on_its_own():
    log = []
    results = timing.run(_subjects(log, {"a": 0.1, "b": 0.2}), timing.Plan(warmup=1, iters=2, interleave=False))
    assert log == ["a", "a", "a", "b", "b", "b"]
    assert [len(r.seconds) for r in results] == [2, 2]


def test_seconds_budget_ends_when_the_slowest_has_run_that_long():
    log = []
    results = timing.run(_subjects(log, {"fast": 0.01, "slow": 0.25}), timing.Plan(warmup=0, iters=None, seconds=1.0))
    assert len(results[1].seconds) == 4  # 4 x 0.25 s reaches 1 s
    assert len(results[0].seconds) == 4  # same rounds for both
    quick = timing.run(_subjects([], {"x": 0.001}), timing.Plan(warmup=0, iters=None, seconds=0.001))
    assert len(quick[0].seconds) == timing.MIN_ITERATIONS


@pytest.mark.parametrize(
    "kwargs", [dict(warmup=-1), dict(iters=0), dict(iters=None, seconds=None), dict(iters=3, seconds=1.0),
               dict(iters=None, seconds=0.0)],
)
def test_plan_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        timing.Plan(**kwargs)


def test_monotonic_clock_measures_the_call():
    import time

    assert 0.015 <= timing.MonotonicClock().measure(lambda: time.sleep(0.02)) < 1.0


def test_rss_probe_sees_an_allocation():
    probe = timing.ProcessRss()
    probe.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    peak, increase = probe.stop()
    del block
    assert increase >= 48 * 2**20 and peak >= increase


# ---- FLOPs and the CPU peak --------------------------------------------------------


def test_flops_of_linear_conv_attention_and_fft():
    linear = torch.nn.Linear(16, 4)
    assert flops.count_flops(linear, torch.zeros(3, 16)) == 2 * 3 * 16 * 4
    conv = torch.nn.Conv2d(3, 8, 3, bias=False)
    assert flops.count_flops(conv, torch.zeros(1, 3, 10, 10)) == 2 * 8 * 8 * 8 * 3 * 3 * 3

    class Attention(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.scaled_dot_product_attention(x, x, x)

    # QK^T and AV: 2 products of 2 heads x 10 x 10 x 8, 2 flops each
    assert flops.count_flops(Attention(), torch.zeros(1, 2, 10, 8)) == 2 * (2 * 2 * 10 * 10 * 8)

    class RoundTrip(torch.nn.Module):
        def forward(self, x):
            return torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:])

    # two real 2-D transforms of 64 points: 2 x 2.5 x 64 x log2(64)
    assert flops.count_flops(RoundTrip(), torch.zeros(1, 1, 8, 8)) == 2 * 2.5 * 64 * 6
    with pytest.raises(ValueError):
        flops.flops_per_image(linear, torch.zeros(2, 16))


def test_cpu_peak_is_cores_lanes_units_flops_clock():
    cpu = {"model": "x", "cores": 2, "logical_cpus": 2, "clock_mhz": 2445.0, "clock_source": "test",
           "simd": ["avx2", "fma"]}
    peak = peaks.cpu_peaks(cpu)
    assert peak["flops_per_s"] == pytest.approx(2 * 8 * 2 * 2 * 2445e6)
    assert peak["formula"] == "2 cores x 8 multiply-adds x 2/cycle x 2 ops x 2445 MHz"
    assert peak["per_precision"]["bf16"]["ops_per_s"] == peak["flops_per_s"]  # no BF16 instructions
    assert peak["per_precision"]["int8"]["ops_per_s"] == pytest.approx(peak["flops_per_s"] * 4 / 3)
    assert peaks.cpu_peaks({**cpu, "simd": ["avx512f", "avx2", "fma"]})["flops_per_s"] == pytest.approx(
        2 * 16 * 2 * 2 * 2445e6)
    assert peaks.cpu_peaks({**cpu, "clock_mhz": None})["flops_per_s"] is None


def _fake_cpuinfo(vendor: str, family: int, flags: str, cores: int = 2) -> str:
    """A /proc/cpuinfo of ``cores`` cores, one thread each."""
    return "\n".join(
        f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel name\t: fake\n"
        f"cpu MHz\t\t: 2000.000\nphysical id\t: 0\ncore id\t\t: {i}\nflags\t\t: {flags}\n"
        for i in range(cores)
    )


@pytest.mark.parametrize(
    "vendor, family, flags, isa, per_core_cycle",
    [
        # AVX2 only: 8 lanes x 2 FMA; no BF16 instructions (as FP32); INT8 in 3 instructions without VNNI.
        ("GenuineIntel", 6, "fpu sse avx avx2 fma f16c", ["avx2"], {"fp32": 32, "bf16": 32, "int8": 128 / 3}),
        # AMD Zen 4: AVX-512 as two 256-bit halves (1 per cycle); VDPBF16PS 2x, VPDPBUSD 4x FP32.
        ("AuthenticAMD", 25, "avx2 fma avx512f avx512_bf16 avx512_vnni", ["avx2", "avx512f", "avx512_bf16",
                                                                          "avx512_vnni"],
         {"fp32": 32, "bf16": 64, "int8": 128}),
        # Intel Sapphire Rapids: 2 AVX-512 FMA units; AMX tiles for BF16 and INT8.
        ("GenuineIntel", 6, "avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8",
         ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"],
         {"fp32": 64, "bf16": 1024, "int8": 2048}),
        # Alder Lake: AVX-VNNI (256-bit) without AVX-512.
        ("GenuineIntel", 6, "avx2 fma avx_vnni", ["avx2", "avx_vnni"], {"fp32": 32, "bf16": 32, "int8": 128}),
    ],
    ids=["avx2", "zen4", "sapphire-rapids", "avx-vnni"],
)
def test_isa_and_peaks_per_precision_from_a_fake_cpuinfo(vendor, family, flags, isa, per_core_cycle):
    cpu = machine.cpu_info(_fake_cpuinfo(vendor, family, flags))
    assert (cpu["vendor"], cpu["family"], cpu["cores"]) == (vendor, str(family), 2)
    peak = peaks.cpu_peaks({**cpu, "clock_mhz": 2000.0})  # the fake's clock, not this machine's cpufreq
    assert peak["isa"] == isa
    got = {key: p["ops_per_s"] / (2 * 2000e6) for key, p in peak["per_precision"].items()}
    assert got == pytest.approx(per_core_cycle)
    assert peak["flops_per_s"] == peak["per_precision"]["fp32"]["ops_per_s"]


def test_rows_are_measured_against_the_peak_of_their_precision():
    rows = [{"variant": v, "batch": 1, "median_ms": 10.0, "images_per_s": 100.0} for v in ("ref", "bf16", "gpu", "odd")]
    per_precision = {"fp32": {"ops_per_s": 1e12}, "bf16": {"ops_per_s": 4e12}, "int8": {"ops_per_s": 8e12}}
    bench._relate(rows, "ref", 10**9, per_precision, {"ref": "fp32", "bf16": "autocast-bf16", "odd": "fp8"})
    by = {r["variant"]: r for r in rows}
    assert (by["ref"]["peak_precision"], by["ref"]["fraction_of_peak"]) == ("fp32", pytest.approx(0.1))
    assert (by["bf16"]["peak_precision"], by["bf16"]["fraction_of_peak"]) == ("bf16", pytest.approx(0.025))
    assert by["gpu"]["fraction_of_peak"] is None and by["odd"]["peak_precision"] is None  # not CPU; unknown
    assert all(r["speedup_vs_reference"] == 1.0 for r in rows)


def test_this_machine_is_described():
    m = machine.describe()
    assert m["cores"] >= 1 and m["logical_cpus"] >= m["cores"] and m["cpu"]
    assert machine.device_label(m) == ("cpu" if not m["gpus"] else machine.device_label(m))
    assert machine.device_label({"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}) == "gpu-h100-80gb-hbm3"

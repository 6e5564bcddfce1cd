"""A benchmark record as files: JSON (``schema.json`` describes it), a Markdown report, PNG plots.

Files are named after the date, the device and the model, so that
``--out benchmarks/results`` keeps a dated history::

    2026-11-23-cpu-dual_branch_vit_b16.json / .md / -latency.png / -probability-diff.png

A second run on the same day and model gets ``-2``, ``-3``, ... rather than
overwriting the first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from specdet.benchmarks import machine as machines

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def to_json(record: dict) -> str:
    """The record as JSON; a figure that is not finite becomes null (JSON has no NaN)."""
    return json.dumps(_finite(record), indent=2) + "\n"


def write(record: dict, out: Path, plots: bool = True) -> dict[str, Path]:
    """Write the record's JSON, Markdown and plots into ``out``; returns their paths (also put in the record)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = _free_stem(out, f"{record['date'][:10]}-{machines.device_label(record['machine'])}-"
                           f"{record['model']['architecture']}")
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    if plots:
        paths["latency_plot"] = out / f"{stem}-latency.png"
        paths["probability_diff_plot"] = out / f"{stem}-probability-diff.png"
    record["files"] = {key: path.name for key, path in paths.items()}
    if plots:
        plot_latency(record, paths["latency_plot"])
        plot_probability_differences(record, paths["probability_diff_plot"])
    paths["markdown"].write_text(markdown(record))
    paths["json"].write_text(to_json(record))
    return paths


def _free_stem(out: Path, stem: str) -> str:
    candidate, n = stem, 1
    while (out / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


# ---- Markdown ---------------------------------------------------------------------


def markdown(record: dict) -> str:
    m, model = record["machine"], record["model"]
    variants = {v["id"]: v for v in record["variants"]}
    gpu = ", ".join(g["name"] for g in m["gpus"]) or "no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    peak = record["cpu_peak"]
    sgemm = peak["measured_sgemm"]
    lines = [
        f"# detect-bench: {model['architecture']}, {record['date']}",
        "",
        f"`{record['command']}`" if record["command"] else "",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({'+'.join(m['simd']) or 'no AVX'}), "
        f"{_num(m['clock_mhz'], '.0f')} MHz, {_num(m['memory_gb'], '.0f')} GB; {gpu}",
        f"- Versions: {versions}",
        f"- Model: {model['architecture']} ({model['checkpoint']}), input {'x'.join(map(str, model['input']))}, "
        f"{_num(_g(model['flops_per_image'], 1e9), '.2f')} GFLOP per image ({model['flops_method']})",
        f"- CPU peak: {_num(_g(peak['flops_per_s'], 1e9), '.1f')} GFLOP/s = {peak['formula']} ({peak['assumptions']}); "
        f"measured: {_num(_g(sgemm['flops_per_s'], 1e9), '.1f')} GFLOP/s ({sgemm['method']}, {sgemm['threads']} threads)",
        *_precision_peaks(peak),
        f"- Images: {record['images']['description']}; {record['images']['count']} scored"
        + (f", {len(record['images']['skipped'])} unreadable skipped" if record["images"]["skipped"] else ""),
        f"- Timing: {record['timing']['method']}; reference {record['reference']}",
        *_gpu_lines(record),
        "",
        "## Latency",
        "",
        "| variant | artifact | FFT | precision | threads | batch | median ms | p90 ms | p99 ms | mean ± sd ms "
        "| images/s | vs reference | % of peak (of) | peak RSS MB (+call) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(record["latency"], key=lambda r: (r["batch"], list(variants).index(r["variant"]))):
        v = variants[r["variant"]]
        lines.append(
            f"| {v['variant']}{_host_timed(r, v)} | {Path(v['artifact']).name} | {v.get('fft_mode') or '-'} | {v.get('precision') or '-'} "
            f"| {v.get('threads') or '-'} | {r['batch']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['mean_ms']:.2f} ± {r['std_ms']:.2f} | {r['images_per_s']:.1f} | {_num(r['speedup_vs_reference'], '.2f', 'x')} "
            f"| {_num(_g(r['fraction_of_peak'], 0.01), '.1f', '%')}{_of(r)} "
            f"| {_num(r['peak_memory_mb'], '.0f')} (+{_num(r['peak_memory_increase_mb'], '.0f')}) |"
        )
    lines += [
        "",
        f"Preprocessing ({record['timing']['preprocessing']}):",
        "",
        "| batch | median ms | p90 ms | p99 ms | mean ± sd ms | ms per image |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["preprocessing"]:
        lines.append(
            f"| {r['batch']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['mean_ms']:.2f} ± {r['std_ms']:.2f} | {r['ms_per_image']:.2f} |"
        )
    labelled = record["images"]["labelled"]
    lines += [
        "",
        f"## Accuracy against {record['reference']} ({record['images']['count']} images)",
        "",
        "| variant | artifact | max abs logit diff | mean abs logit diff | max abs prob diff | mean abs prob diff "
        "| decisions agree |" + (" AUC | AUC diff | AP | AP diff |" if labelled else ""),
        "|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|" if labelled else ""),
    ]
    for r in record["accuracy"]:
        v = variants[r["variant"]]
        row = (
            f"| {v['variant']} | {Path(v['artifact']).name} | {_num(r['logit_max_abs'], '.2e')} "
            f"| {_num(r['logit_mean_abs'], '.2e')} | {_num(r['probability_max_abs'], '.2e')} "
            f"| {_num(r['probability_mean_abs'], '.2e')} | {r['decision_agreement']:.2%} ({r['disagreements']} differ) |"
        )
        if labelled:
            d = r["detection"]["mean"]
            row += (f" {_num(d['auc'], '.4f')} | {_num(d['auc_diff'], '+.1e')} | {_num(d['ap'], '.4f')} "
                    f"| {_num(d['ap_diff'], '+.1e')} |")
        lines.append(row)
    if labelled:
        lines += _per_source(record)
    if record["profile"]:
        lines += _profile(record)
    lines += [
        "",
        "## What ran",
        "",
        "| variant | artifact | summary | library | provider | options | precision | FFT | threads | timed | load s "
        "| load MB |",
        "|---|---|---|---|---|---|---|---|---:|---|---:|---:|",
    ]
    for v in record["variants"]:
        library = ", ".join(f"{k} {val}" for k, val in v["library"].items())
        lines.append(
            f"| {v['variant']} | {Path(v['artifact']).name} | {v['summary']} | {library} | {v['provider']} "
            f"| {_options(v)} | {v.get('precision') or '-'} | {v.get('fft_mode') or '-'} | {v.get('threads') or '-'} "
            f"| {'yes' if v['timed'] else 'no (reference only)'} | {v['load_seconds']:.1f} | {_num(v['load_memory_mb'], '.0f')} |"
        )
    files = record.get("files") or {}
    plots = [files[k] for k in ("latency_plot", "probability_diff_plot") if k in files]
    if plots:
        lines += ["", " ".join(f"![{p}]({p})" for p in plots)]
    lines += ["", f"({record['seconds']:.0f} s in all)", ""]
    return "\n".join(lines)


def _profile(record: dict) -> list[str]:
    variants = {v["id"]: v for v in record["variants"]}
    lines = ["", "## Where the time goes", "",
             "Operator types by share of one call's operator time (--profile; torch: self CPU time of aten ops, "
             "onnxruntime: kernel time per ONNX op type):", ""]
    for p in record["profile"]:
        v = variants[p["variant"]]
        ops = ", ".join(f"{o['op']} {o['share']:.0%} ({o['ms']:.1f} ms)" for o in p["ops"]) if p["ops"] else "not profiled"
        lines.append(f"- {v['variant']} {Path(v['artifact']).name}, batch {p['batch']}: {ops}")
    return lines


def _precision_peaks(peak: dict) -> list[str]:
    """One line per precision: the peak each row's fraction is measured against (records from before it: none)."""
    if "per_precision" not in peak:
        return []
    parts = [f"{key.upper()} {_num(_g(p['ops_per_s'], 1e9), '.1f')} G/s ({p['instruction']})"
             for key, p in peak["per_precision"].items()]
    return [f"- Peak per precision ({'+'.join(peak['isa']) or 'no AVX2'}): " + "; ".join(parts)]


def _of(row: dict) -> str:
    if not row.get("peak_precision") or row["fraction_of_peak"] is None:
        return ""
    return " (GPU FP16 tensor)" if row["peak_precision"] == "gpu_fp16_tensor" else f" ({row['peak_precision'].upper()})"


def _host_timed(row: dict, variant: dict) -> str:
    """A GPU row timed through runner.infer (host array in and out: transfers and a host wait included)."""
    return " (host to host)" if row.get("timed") == "host" and str(variant.get("provider", "")).startswith("cuda") else ""


def _gpu_lines(record: dict) -> list[str]:
    """The GPU's peak, its math settings, and the transfers timed apart (records without a GPU: none)."""
    lines = []
    peak = record.get("gpu_peak")
    if peak:
        lines.append(f"- GPU peak: FP16 tensor {peak['fp16_tensor_flops_per_s'] / 1e12:.0f} TFLOP/s, memory "
                     f"{peak['memory_bytes_per_s'] / 1e12:.2f} TB/s ({peak['source']})")
    math = record["machine"].get("gpu_math")
    if math:
        lines.append("- GPU math: " + ", ".join(f"{k} {v}" for k, v in math.items()))
    if any(r.get("timed") == "device" for r in record["latency"]):
        lines.append("- GPU rows: the device's time per call on a batch already on the device (CUDA graph replays or "
                     "eager forwards, blocks of back-to-back calls between one pair of events, median over blocks); "
                     "host-device copies are timed apart below, files to probabilities is the end-to-end benchmark's")
    for t in record.get("transfers") or []:
        lines.append(f"- Transfer, batch {t['batch']}: {t['direction']} {t['bytes'] / 2**20:.2f} MiB in "
                     f"{t['median_ms']:.3f} ms ({_num(t['gb_per_s'], '.1f')} GB/s, spread {_num(_g(t['block_spread'], 0.01), '.1f', '%')})")
    return lines


def _options(variant: dict) -> str:
    options = []
    if "graph_optimization" in variant:
        options.append(variant["graph_optimization"])
    if "spinning" in variant:
        options.append(f"spinning {variant['spinning']}")
    if "performance_hint" in variant:
        options.append(f"{variant['performance_hint']}, {variant['streams']} stream(s), {variant['artifact_precision']} file")
    return ", ".join(options) or "-"


def _per_source(record: dict) -> list[str]:
    variants = {v["id"]: v for v in record["variants"]}
    sources = sorted(record["images"]["sources"])
    lines = [
        "",
        "AUC per source (difference from the reference in brackets):",
        "",
        "| variant | artifact | " + " | ".join(sources) + " |",
        "|---|---|" + "---:|" * len(sources),
    ]
    for r in record["accuracy"]:
        per = r["detection"]["per_source"]
        cells = [f"{_num(per[s]['auc'], '.3f')} ({_num(per[s]['auc_diff'], '+.0e')})" if s in per else "-"
                 for s in sources]
        v = variants[r["variant"]]
        lines.append(f"| {v['variant']} | {Path(v['artifact']).name} | " + " | ".join(cells) + " |")
    return lines


def _g(value, scale):
    return None if value is None else value / scale


def _num(value, fmt: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{fmt}}{suffix}"


# ---- plots ------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(record: dict, variant_id: str) -> str:
    v = next(v for v in record["variants"] if v["id"] == variant_id)
    return f"{v['variant']} ({Path(v['artifact']).name})"


def plot_latency(record: dict, path: Path) -> None:
    """Median latency per image against batch size, one line per variant, p90 as the upper bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    for variant_id in dict.fromkeys(r["variant"] for r in record["latency"]):
        rows = sorted((r for r in record["latency"] if r["variant"] == variant_id), key=lambda r: r["batch"])
        batch = np.array([r["batch"] for r in rows])
        median = np.array([r["median_ms"] for r in rows]) / batch
        p90 = np.array([r["p90_ms"] for r in rows]) / batch
        ax.errorbar(batch, median, yerr=[np.zeros_like(median), p90 - median], marker="o", capsize=3,
                    label=_label(record, variant_id))
    batches = sorted({r["batch"] for r in record["latency"]})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per image (median; bar to p90)")
    ax.set_title(f"{record['model']['architecture']} on {record['machine']['cpu']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_probability_differences(record: dict, path: Path) -> None:
    """Histogram of |probability - reference probability| per variant (log bins; exact zeros at the left)."""
    plt = _pyplot()
    rows = [r for r in record["accuracy"] if r["variant"] != record["reference"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.set_xscale("log")
    zero_bin = None
    for r in rows:
        h = r["probability_diff_histogram"]
        edges = h["edges"]
        # Exact zeros get a bin of their own two decades left of the first edge, labelled 0.
        zero_bin = (edges[0] / 100, edges[0] / 10)
        ax.stairs([h["zeros"], 0, *h["counts"]], [*zero_bin, *edges], label=_label(record, r["variant"]))
    if zero_bin is not None:
        ticks = [math.sqrt(zero_bin[0] * zero_bin[1])] + [10.0**e for e in range(-10, 1, 2)]
        ax.set_xticks(ticks, ["0"] + [f"1e{e}" for e in range(-10, 1, 2)])
        ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel(f"|probability difference| from {record['reference']}")
    ax.set_ylabel("images")
    ax.set_title(f"{record['model']['architecture']}: {record['images']['count']} images", fontsize=10)
    ax.grid(True, alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value

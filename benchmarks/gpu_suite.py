"""One GPU validation suite: every GPU check and measurement, in order of value, within a time budget.

    python -m specdet.benchmarks.gpu_suite --out DIR [--budget-s 480] [--dry-run]

Steps (:mod:`specdet.benchmarks.gpu_steps`): the kernel library built for
this GPU and its contract tests; the kernel micro-benchmark, which chooses
each op's method; both full-size detectors under detect-bench's GPU variants
(eager FP32, autocast FP16/BF16, our kernels, CUDA graphs, the fast path of
fast_graph.py) at batch 1/8/32/128; training steps; TensorRT engines where a
TensorRT is installed; then the torch.compile variants, the fast path's last. Each step runs in a child process with the
time left as its limit, and is skipped when its estimate exceeds what is
left. After every step ``DIR/gpu-suite.json`` (schema
``gpu_suite_schema.json``), ``DIR/gpu-suite.md`` and ``DIR/gpu-suite.log``
are rewritten, so a run cut short still leaves every finished figure.

``--dry-run`` runs the same steps on the CPU at tiny sizes with CPU
fallbacks (CI runs it); it checks the suite, it measures nothing.
Exit status: 0 when no step failed (skipped steps are not failures), 1
otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from specdet import cli
from specdet.benchmarks import gpu_steps
from specdet.files import atomic_write

FORMAT = "specdet-gpu-suite"
VERSION = 1
SCHEMA = Path(__file__).resolve().parent / "gpu_suite_schema.json"
DEFAULT_BUDGET_S = 480
MARGIN_S = 5  # kept back from each step's limit to collect its result and write the report
NAMES = {"json": "gpu-suite.json", "markdown": "gpu-suite.md", "log": "gpu-suite.log"}


def parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m specdet.benchmarks.gpu_suite", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for gpu-suite.json, .md and .log")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, metavar="S",
                   help=f"seconds for the whole suite; steps that would not fit are skipped (default: {DEFAULT_BUDGET_S})")
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (a check of the suite)")
    p.add_argument("--steps", metavar="LIST", help="comma-separated step names to run, in the suite's order "
                   f"(default: all): {', '.join(gpu_steps.STEPS)}")
    p.add_argument("--step", help=argparse.SUPPRESS)  # the child process: run this one step
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.step:
        return _child(args.step, gpu_steps.Context(args.dry_run, args.work))
    if args.budget_s <= 0:
        print(f"gpu_suite: --budget-s {args.budget_s}: give a positive number of seconds", file=sys.stderr)
        return 2
    names = list(gpu_steps.STEPS)
    if args.steps:
        wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in gpu_steps.STEPS]
        if unknown:
            print(f"gpu_suite: unknown step {unknown[0]!r}: choose from {', '.join(names)}", file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted]
    if not args.dry_run and not _cuda_available():
        print("gpu_suite: no CUDA device here: run it on the GPU machine, or add --dry-run to check the suite on the CPU",
              file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"gpu_suite: --out {args.out} is a file: give a folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m specdet.benchmarks.gpu_suite", *(sys.argv[1:] if argv is None else argv)])
    record = run(names, args.out, args.budget_s, args.dry_run, command)
    failed = [s["name"] for s in record["steps"] if s["status"] in ("failed", "timed_out")]
    print(f"gpu_suite: {len(record['steps']) - len(failed)} of {len(record['steps'])} steps without failure "
          f"in {record['seconds']:.0f} s; wrote {', '.join(str(args.out / n) for n in NAMES.values())}")
    return 1 if failed else 0


def run(names: list[str], out: Path, budget_s: float, dry_run: bool, command: str) -> dict[str, Any]:
    started = time.monotonic()
    record: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "dry_run": dry_run, "budget_s": budget_s, "seconds": 0.0,
        "environment": environment(), "steps": [], "headline": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as folder, open(out / NAMES["log"], "w") as log:
        work = Path(folder)
        for name in names:
            step = gpu_steps.STEPS[name]
            left = budget_s - (time.monotonic() - started)
            estimate = step.estimate_dry_s if dry_run else step.estimate_s
            entry: dict[str, Any] = {"name": name, "what": step.what, "estimate_s": estimate}
            if dry_run and name in gpu_steps.DRY_RUN_SKIPS:
                entry.update(status="skipped", reason="not in --dry-run (torch.compile takes minutes on a CPU)")
            elif estimate > left:
                entry.update(status="skipped", reason=f"needs about {estimate:.0f} s, {max(left, 0):.0f} s of the budget left")
            else:
                # A step may take three times its estimate (a slower GPU, a cold cache), not the whole budget.
                entry.update(_run_step(name, work, dry_run, min(left - MARGIN_S, 3 * estimate), log))
            print(f"gpu_suite: {name}: {entry['status']}"
                  + (f" in {entry['seconds']:.1f} s" if "seconds" in entry else f" ({entry.get('reason', '')})"), flush=True)
            record["steps"].append(entry)
            record["seconds"] = round(time.monotonic() - started, 1)
            record["headline"] = headline(record["steps"])
            write(record, out)
    return record


def _run_step(name: str, work: Path, dry_run: bool, limit_s: float, log) -> dict[str, Any]:
    """The step in a child process of its own (``--step NAME``), which saves its result as ``work/NAME.json``."""
    command = [sys.executable, "-m", "specdet.benchmarks.gpu_suite", "--out", str(work), "--step", name, "--work", str(work)]
    command += ["--dry-run"] if dry_run else []
    log.write(f"==== {name} ====\n")
    entry = run_child(command, work / f"{name.replace(':', '_')}.json", limit_s, log)
    failed_tests = name == "kernel_tests" and entry["status"] == "ok" and (
        entry["result"].get("failed") or entry["result"].get("pytest_exit"))
    if failed_tests:
        result = entry["result"]
        entry.update(status="failed", reason=f"{result.get('failed')} kernel tests failed (pytest exit {result.get('pytest_exit')})")
    return entry


def run_child(command: list[str], saved: Path, limit_s: float, log) -> dict[str, Any]:
    """Run ``command``, its output streamed here and into ``log``; killed with its children at ``limit_s``.

    Its result is the JSON it saved at ``saved``: ``{"result": ...}`` or ``{"error": ..., "traceback": ...}``.
    """
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail: collections.deque[str] = collections.deque(maxlen=30)

    def pump() -> None:
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()  # live progress on the GPU machine, whose output is read as it comes
            log.write(line)
            tail.append(line)
        log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status = child.wait(timeout=max(limit_s, 1))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the step and anything it started (pytest, compilers)
        child.wait()
        status = None
    reader.join(timeout=10)
    seconds = round(time.monotonic() - started, 1)
    if status is None:
        return {"status": "timed_out", "seconds": seconds, "reason": f"killed at its limit of {limit_s:.0f} s",
                "output_tail": "".join(tail)[-3000:]}
    if not saved.is_file():
        return {"status": "failed", "seconds": seconds, "reason": f"the step's process exited with status {status}",
                "output_tail": "".join(tail)[-3000:]}
    body = json.loads(saved.read_text())
    if "error" in body:
        return {"status": "failed", "seconds": seconds, "reason": body["error"], "output_tail": body.get("traceback", "")[-3000:]}
    return {"status": "ok", "seconds": seconds, "result": body["result"]}


def _child(name: str, ctx: gpu_steps.Context) -> int:
    saved = ctx.work / f"{name.replace(':', '_')}.json"
    try:
        result = gpu_steps.STEPS[name].run(ctx)
    except Exception as error:  # noqa: BLE001 (the parent records the failure and goes on)
        traceback.print_exc()
        saved.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()}))
        return 1
    saved.write_text(json.dumps({"result": result}, default=_json_default))
    return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return str(value)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ---- the machine -----------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """The device, driver, toolkit and library versions the figures were measured with."""
    import torch

    from specdet.benchmarks import machine, peaks
    from specdet.versions import library_versions

    versions = library_versions(("triton", "cupy", "numpy"))
    env: dict[str, Any] = {
        "host": platform.node(), "system": platform.platform(), "cpu": machine.describe(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "versions": versions,
        "nvcc": _first_line(["nvcc", "--version"], last=True), "gpu": None, "driver": None, "gpu_math": None, "gpu_peak": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name, compute_capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
            driver=_first_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
            gpu_math=machine.gpu_math(), gpu_peak=peaks.gpu_peaks(props.name),
        )
    return env


def _first_line(command: list[str], last: bool = False) -> str | None:
    if not shutil.which(command[0]):
        return None
    try:
        lines = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (lines[-1] if last else lines[0]).strip() if lines else None


# ---- the headline figures --------------------------------------------------------------------------


def headline(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The kernels over the models' own torch.fft path, and the best GPU path over both eager FP32 baselines
    (strict, TF32), each with its fraction of the GPU's peak."""
    results = {s["name"]: s.get("result") for s in steps if s.get("status") == "ok"}
    out: dict[str, Any] = {}
    kernels = results.get("kernels_bench")
    if kernels:
        out["kernel_speedup_vs_model_path"] = _kernel_speedups(kernels["summary"])
        out["chosen_methods"] = kernels.get("chosen_methods", {})
    best, differences = {}, {}
    for name, result in results.items():
        if name.startswith(("bench:", "compile:", "compile-fast:")) and result:
            best.setdefault(result["model"], []).extend(result["record"]["latency"])
            differences.update({row["variant"]: row["probability_max_abs"]
                                for row in result["record"].get("accuracy", [])})
    out["best_gpu_path_vs_eager_fp32"] = {model: _best_paths(rows, differences) for model, rows in best.items()}
    trained = {name: r for name, r in results.items() if name.startswith(("train:", "train-compile:")) and r}
    out["training_images_per_s"] = {name: round(r["images_per_s"], 1) for name, r in trained.items()}
    out["files_to_probabilities"] = {r["model"]: _files_per_s(r["record"]) for name, r in results.items()
                                     if name.startswith("end_to_end:") and r}
    return out


def _files_per_s(record: dict) -> dict:
    """The serial loop's and the best worker count's images/s, and whether every row scored as the serial loop."""
    best = max(record["rows"], key=lambda row: row["images_per_s"]["median"])
    return {"serial": record["rows"][0]["images_per_s"]["median"], "best": best["images_per_s"]["median"],
            "workers": best["workers"], "resize": best["resize"],
            "identical": all(r["identical_probabilities"] for r in record["rows"]) and bool(record["identical_crops"])
            and record["identical_device_crops"] is not False and record["same_as_float_input"],
            "device_decode": (record.get("device_decode") or {}).get("images_per_s", {}).get("median")}


def _kernel_speedups(summary: list[dict]) -> list[dict]:
    """Per op, dtype and shape: the faster kernel method, its speed-up over the models' own torch.fft path (and the
    seed's chain, which nothing ships), its fraction of the memory bandwidth, and whether a model runs it."""
    best: dict[tuple, dict] = {}
    for entry in summary:
        key = (entry["op"], entry["dtype"], tuple(entry["shape"]))
        if key not in best or entry["median_ms"] < best[key]["median_ms"]:
            best[key] = entry
    return [{"op": e["op"], "dtype": e["dtype"], "shape": e["shape"], "method": e["method"], "median_ms": e["median_ms"],
             "baseline": "torch-rfft", "speedup": e.get("speedup_vs_torch-rfft"),
             "speedup_vs_seed_chain": e.get("speedup_vs_seed-fft-chain"),
             "fraction_of_memory_bandwidth": e.get("fraction_of_memory_bandwidth"),
             "model_runs_it": e.get("model_runs_it", True)} for e in best.values()]


def _best_paths(rows: list[dict], differences: dict[str, float | None]) -> list[dict]:
    """Per batch size: the fastest variant, its speed-up over strict FP32 (torch-cuda-fp32, or the CPU reference in a
    dry run) and over FP32 with TF32 (torch-cuda-fp32-tf32), its fraction of the GPU's FP16 tensor peak, and its
    largest probability difference against the CPU FP32 reference (``differences``, per variant id; the contract
    is 1e-3)."""
    by_batch: dict[int, list[dict]] = {}
    for row in rows:
        by_batch.setdefault(row["batch"], []).append(row)
    found = []
    for batch, group in sorted(by_batch.items()):
        base = [r for r in group if r["variant"].split(":")[0] in ("torch-cuda-fp32", "torch-fp32")]
        tf32 = [r for r in group if r["variant"].split(":")[0] == "torch-cuda-fp32-tf32"]
        fastest = min(group, key=lambda r: r["median_ms"])
        found.append({"batch": batch, "variant": fastest["variant"], "median_ms": fastest["median_ms"],
                      "baseline": base[0]["variant"] if base else None,
                      "speedup": base[0]["median_ms"] / fastest["median_ms"] if base else None,
                      "speedup_vs_tf32": tf32[0]["median_ms"] / fastest["median_ms"] if tf32 else None,
                      "fraction_of_fp16_tensor_peak": fastest.get("fraction_of_peak")
                      if fastest.get("peak_precision") == "gpu_fp16_tensor" else None,
                      "probability_max_abs": differences.get(fastest["variant"]),
                      "timed": fastest.get("timed")})
    return found


# ---- the report ------------------------------------------------------------------------------------


def write(record: dict[str, Any], out: Path) -> None:
    text = json.dumps(record, indent=1, default=_json_default) + "\n"
    atomic_write(out / NAMES["json"], lambda f: f.write(text.encode()))
    page = markdown(record)
    atomic_write(out / NAMES["markdown"], lambda f: f.write(page.encode()))


def markdown(record: dict[str, Any]) -> str:
    env = record["environment"]
    lines = [
        f"# GPU suite{' (dry run: CPU, tiny sizes, not a measurement)' if record['dry_run'] else ''}", "",
        f"- date: {record['date']}; {record['seconds']:.0f} s of a {record['budget_s']:.0f} s budget",
        f"- command: `{record['command']}`",
        f"- GPU: {env.get('gpu') or 'none'}"
        + (f" (sm {env['compute_capability']}, {env['gpu_memory_gib']} GiB, driver {env['driver']})" if env.get("gpu") else ""),
        f"- torch {env['torch']} (CUDA {env['torch_cuda']}), nvcc: {env['nvcc']}",
        f"- GPU math: {_settings(env.get('gpu_math'))}",
        f"- GPU peak: {_peak_line(env.get('gpu_peak'))}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}", "",
        "| step | status | seconds | note |", "|---|---|---:|---|",
    ]
    for step in record["steps"]:
        lines.append(f"| {step['name']} | {step['status']} | {step.get('seconds', '')} | {_cell(step.get('reason', ''))} |")
    lines += _headline_md(record["headline"])
    for step in record["steps"]:
        result = step.get("result")
        if step["status"] != "ok" or not result:
            continue
        lines += ["", f"## {step['name']}", ""]
        if step["name"] == "kernel_tests":
            lines.append(f"{result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped "
                         f"(library built in {result['build_s']} s: `{result['library']}`)")
            lines += [f"- {f}" for f in result["failures"]]
        elif step["name"] == "kernels_bench":
            lines += _kernels_md(result)
        elif step["name"].startswith("end_to_end:"):
            lines.append(result["markdown"])
        elif "record" in result:
            if result["failed_attempts"]:
                lines += [f"- first attempt failed ({', '.join(a['variants'])}): {_cell(a['error'])}" for a in result["failed_attempts"]]
            lines += [f"Kernel method: {result['kernels_method']}", "", result["markdown"]]
        else:
            lines += ["```json", json.dumps(result, indent=1, default=_json_default), "```"]
    return "\n".join(lines) + "\n"


def _settings(math: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in math.items()) if math else "no GPU"


def _peak_line(peak: dict | None) -> str:
    if not peak:
        return "not known for this device (fractions of peak left empty)"
    return (f"FP16 tensor {peak['fp16_tensor_flops_per_s'] / 1e12:.0f} TFLOP/s, memory {peak['memory_bytes_per_s'] / 1e12:.2f} TB/s "
            f"({peak['source']})")


def _headline_md(head: dict[str, Any]) -> list[str]:
    lines = ["", "## Headline", ""]
    speedups = head.get("kernel_speedup_vs_model_path")
    if speedups:
        lines += ["Our kernels (faster method) against the models' own torch.fft path (torch-rfft), and the seed's chain "
                  "(which nothing ships); blocks of back-to-back calls on inputs rotated past L2:", "",
                  "| op | dtype | shape | method | median ms | over torch.fft | over seed chain | % of memory BW | a model runs it |",
                  "|---|---|---|---|---:|---:|---:|---:|---|"]
        lines += [f"| {e['op']} | {e['dtype']} | {e['shape']} | {e['method']} | {e['median_ms']:.3f} | {_x(e['speedup'])} | "
                  f"{_x(e.get('speedup_vs_seed_chain'))} | {_pct(e.get('fraction_of_memory_bandwidth'))} | "
                  f"{'yes' if e.get('model_runs_it', True) else 'no'} |" for e in speedups]
        lines += ["", f"Chosen methods (`auto`): {head.get('chosen_methods')}", ""]
    for model, rows in head.get("best_gpu_path_vs_eager_fp32", {}).items():
        lines += [f"Best path for {model} (GPU time on a batch already on the device; transfers apart):", "",
                  "| batch | variant | median ms | over strict FP32 | over TF32 | % of FP16 tensor peak | max \\|dp\\| vs CPU FP32 |",
                  "|---:|---|---:|---|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {r['variant']} | {r['median_ms']:.2f} | {_x(r['speedup'])} {r['baseline'] or ''} | "
                  f"{_x(r.get('speedup_vs_tf32'))} | {_pct(r.get('fraction_of_fp16_tensor_peak'))} | "
                  f"{_e(r.get('probability_max_abs'))} |" for r in rows]
        lines.append("")
    files = head.get("files_to_probabilities")
    if files:
        lines += ["Files to probabilities (JPEG files in the page cache; images/s):", "",
                  "| model | serial loop | best | with | same scores and crops as serial | decoded on the device (nvJPEG on a GPU) |",
                  "|---|---:|---:|---|---|---:|"]
        lines += [f"| {model} | {f['serial']:.0f} | {f['best']:.0f} | {f['workers']} workers, resize on {f.get('resize', 'worker')} | "
                  f"{'yes' if f['identical'] else 'no'} | {f['device_decode'] or ''} |" for model, f in files.items()]
        lines.append("")
    return lines


def _kernels_md(result: dict[str, Any]) -> list[str]:
    lines = ["| op | dtype | shape | impl | median ms | spread | calls x blocks | inputs | % of memory BW | max abs err |",
             "|---|---|---|---|---:|---:|---|---:|---:|---:|"]
    for row in result["rows"]:
        if "median_ms" in row:
            lines.append(f"| {row['op']} | {row['dtype']} | {row['shape']} | {row['impl']} | {row['median_ms']:.3f} | "
                         f"{_pct(row['block_spread'])} | {row['calls_per_block']} x {row['blocks']} | {row['inputs_rotated']} | "
                         f"{_pct(row.get('fraction_of_memory_bandwidth'))} | {row['max_abs_error']:.2e} |")
        else:
            lines.append(f"| {row['op']} | {row['dtype']} | {row['shape']} | {row['impl']} | {_cell(row.get('error', ''))} | | | | | |")
    return lines


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _e(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:400]


if __name__ == "__main__":
    sys.exit(main())

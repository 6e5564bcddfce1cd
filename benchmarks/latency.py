"""Side-by-side CPU latency of several artifacts of one model (torch checkpoint, ONNX files).

The runners do not time themselves; this module does, the same way for all:
after a warm-up, each repetition runs every artifact once on the same batch,
in rotating order, so that drifts of the machine (other load, frequency)
fall on all of them alike. Reports the median and the spread per artifact
and batch size, with the machine and library versions.

    python -m specdet.benchmarks.latency model.pth model-matmul.onnx --batch-sizes 1,8 --out result.json

The full benchmark tool (``detect-bench``: accuracy, plots, GPU backends)
builds on this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from specdet import cli
from specdet.export.artifact import library_versions
from specdet.runtime import create_runner


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform()}


def measure(artifacts: list[str], batch_sizes: list[int], *, repeats: int, warmup: int, threads: int | None) -> list[dict]:
    runners = [create_runner(a, threads=threads) for a in artifacts]
    spec = runners[0].input_spec()
    rows = []
    progress = tqdm(total=len(batch_sizes) * (warmup + repeats), desc="latency", disable=not sys.stderr.isatty())
    for batch in batch_sizes:
        x = np.random.default_rng(0).standard_normal((batch, *spec.shape[1:]), dtype=np.float32)
        times: list[list[float]] = [[] for _ in runners]
        for rep in range(warmup + repeats):
            order = list(range(len(runners)))
            order = order[rep % len(order):] + order[: rep % len(order)]
            for i in order:
                start = time.perf_counter()
                runners[i].infer(x)
                elapsed = time.perf_counter() - start
                if rep >= warmup:
                    times[i].append(elapsed)
            progress.update()
        for artifact, runner, samples in zip(artifacts, runners, times):
            median = statistics.median(samples)
            rows.append({
                "artifact": Path(artifact).name, "backend": runner.name, "batch": batch,
                "median_ms": median * 1e3, "min_ms": min(samples) * 1e3, "max_ms": max(samples) * 1e3,
                "images_per_s": batch / median, "repeats": len(samples),
            })
    progress.close()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| artifact | backend | batch | median ms | min ms | max ms | images/s | vs first |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    first = {}
    for r in rows:
        base = first.setdefault(r["batch"], r["median_ms"])
        lines.append(
            f"| {r['artifact']} | {r['backend']} | {r['batch']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} "
            f"| {r['max_ms']:.1f} | {r['images_per_s']:.1f} | {base / r['median_ms']:.2f}x |"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = measure(args.artifacts, batch_sizes, repeats=args.repeats, warmup=args.warmup, threads=args.threads)
    print(table(rows))
    if args.out:
        record = {
            "command": " ".join(["python -m specdet.benchmarks.latency", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(), "versions": library_versions(), "threads": args.threads, "rows": rows,
        }
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdet.benchmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="+", help="checkpoints (.pth) and exported files (.onnx) of one model")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="threads per backend (default: the backend's own)")
    parser.add_argument("--out", help="write the rows, machine and versions to this JSON file")
    cli.add_debug_flag(parser)
    return cli.run(_run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

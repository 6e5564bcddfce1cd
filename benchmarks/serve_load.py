"""A load run: ``detect-serve``'s Triton server against the in-process :class:`~specdet.runtime.Detector`.

``python -m specdet.benchmarks.serve_load ARTIFACT [--concurrency 1,8,32] [--seconds S] [--protocol http|grpc|both|all]``

For each concurrency level C, C threads each send one encoded image per
request in a closed loop (a new request as soon as the last one answered)
for ``--seconds`` after ``--warmup`` seconds: to Triton through their own
``tritonclient`` client (the server started as ``detect-serve`` starts it,
on free ports of 127.0.0.1; HTTP through its request guard, and with ``all``
also straight to Triton's own port, ``http-direct``, which shows what the
guard costs), then to one in-process ``Detector`` on the same
artifact (``predict([bytes])``, one image per call: what a service gets
without Triton's dynamic batching). Requests answered inside the measured
window count; their latencies give p50/p90/p99. For Triton the detector
model's statistics (before and after each level, warm-up included) give the
batches the dynamic batcher formed. Writes ``<date>-cpu-serve-<model>.json``
and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from specdet import cli
from specdet.benchmarks import machine
from specdet.benchmarks.stats import percentile
from specdet.serve.repository import Options, write_repository
from specdet.serve.server import Endpoints, TritonServer, free_ports
from specdet.versions import library_versions

MODEL = "specdet"
DETECTOR = f"{MODEL}_detector"


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_run, _parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m specdet.benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="exported model.onnx")
    parser.add_argument("--concurrency", default="1,8,32", help="client threads per level, comma-separated")
    parser.add_argument("--seconds", type=cli.number_range(0, above=True), default=10.0, help="measured per level")
    parser.add_argument("--warmup", type=cli.number_range(0), default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--protocol", choices=("http", "grpc", "both", "all"), default="both",
                        help="both: HTTP (through the request guard) and gRPC; all: also HTTP straight to Triton's "
                        "own port (http-direct), which shows what the guard costs")
    parser.add_argument("--images", type=Path, help="folder of image files (default: scikit-image's sample photos)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the .json and .md")
    parser.add_argument("--threads", type=cli.THREADS, help="the in-process Detector's threads (default: its own)")
    parser.add_argument("--max-batch", type=cli.BATCH, help="Triton's largest dynamic batch (default: the artifact's)")
    parser.add_argument("--queue-delay-us", type=cli.int_range(0), default=100, help="dynamic batching delay")
    parser.add_argument("--note", default="", help="a line for the report (the machine's state, say)")
    cli.add_debug_flag(parser)
    return parser


def encoded_images(folder: Path | None) -> list[bytes]:
    """The request bodies: the files of ``folder`` as they are, or the sample photos encoded once as JPEG."""
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        if not files:
            raise cli.SpecdetError(f"no .jpg/.png/.webp files under {folder}")
        return [p.read_bytes() for p in files]
    import io

    from PIL import Image

    from specdet.images import sample_photos

    bodies = []
    for _, array in sample_photos():
        buffer = io.BytesIO()
        Image.fromarray(array).convert("RGB").save(buffer, "JPEG", quality=90)
        bodies.append(buffer.getvalue())
    return bodies


def closed_loop(concurrency: int, connect: Callable[[], Callable[[bytes], object]], images: list[bytes],
                warmup: float, seconds: float) -> dict:
    """C threads, each ``send = connect()`` then ``send(image)`` until the window ends; latencies of the window."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(concurrency + 1)
    window: list[float] = []

    def worker(index: int) -> None:
        try:
            send = connect()
        except Exception as err:  # noqa: BLE001 (a client that cannot connect counts as an error, the run goes on)
            with lock:
                errors.append(f"connect: {err}")
            ready.wait()
            return
        ready.wait()
        start, end = window
        mine, failed, i = [], [], index
        while True:
            before = time.perf_counter()
            if before >= end:
                break
            try:
                send(images[i % len(images)])
                ok = True
            except Exception as err:  # noqa: BLE001
                ok, message = False, str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            after = time.perf_counter()
            i += concurrency
            if start <= after <= end:
                mine.append(after - before) if ok else failed.append(message)
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window.extend([now + warmup, now + warmup + seconds])
    ready.wait()
    for t in threads:
        t.join()
    ms = [s * 1000 for s in latencies]
    row = {"concurrency": concurrency, "seconds": seconds, "requests": len(ms), "errors": len(errors),
           "images_per_s": len(ms) / seconds}
    if ms:
        row.update({f"p{q}_ms": percentile(ms, q) for q in (50, 90, 99)})
        row["mean_ms"] = sum(ms) / len(ms)
    if errors:
        row["first_error"] = errors[0]
    return row


def _client(protocol: str, server: TritonServer) -> Callable[[], Callable[[bytes], object]]:
    import numpy as np

    if protocol == "grpc":
        import tritonclient.grpc as module
        url = server.endpoints.grpc_url
    else:
        import tritonclient.http as module
        url = server.direct_http_url if protocol == "http-direct" else server.endpoints.http_url

    def connect() -> Callable[[bytes], object]:
        client = module.InferenceServerClient(url)

        def send(image: bytes) -> object:
            tensor = module.InferInput("image", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
            return client.infer(MODEL, [tensor]).as_numpy("probability")

        return send

    return connect


def _detector_stats(admin) -> dict:
    """The detector model's inference and execution counts, and executions per batch size."""
    (stats,) = admin.get_inference_statistics(DETECTOR)["model_stats"]
    by_size = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
    return {"inferences": int(stats["inference_count"]), "executions": int(stats["execution_count"]),
            "by_size": by_size}


def _batches(before: dict, after: dict) -> dict:
    inferences = after["inferences"] - before["inferences"]
    executions = after["executions"] - before["executions"]
    sizes = {size: count - before["by_size"].get(size, 0) for size, count in sorted(after["by_size"].items())}
    return {"inferences": inferences, "executions": executions,
            "mean_batch": inferences / executions if executions else None,
            "executions_by_batch_size": {str(k): v for k, v in sizes.items() if v}}


def run_triton(args: argparse.Namespace, levels: list[int], images: list[bytes]) -> tuple[list[dict], str]:
    import tritonclient.http as httpclient

    protocols = {"both": ["http", "grpc"], "all": ["http", "http-direct", "grpc"]}.get(args.protocol, [args.protocol])
    work = Path(tempfile.mkdtemp(prefix="specdet-serve-load-"))
    server = None
    try:
        repository = write_repository([args.artifact], work / "models", Options(
            detector="python", name=MODEL, max_batch=args.max_batch, queue_delay_us=args.queue_delay_us))
        endpoints = Endpoints("127.0.0.1", *free_ports(3))
        server = TritonServer(repository, endpoints)
        server.start()
        rows = []
        with httpclient.InferenceServerClient(endpoints.http_url) as admin:
            version = admin.get_server_metadata()["version"]
            for protocol in protocols:
                for c in levels:
                    before = _detector_stats(admin)
                    row = closed_loop(c, _client(protocol, server), images, args.warmup, args.seconds)
                    row = {"path": "triton", "protocol": protocol, **row,
                           "server_batches": _batches(before, _detector_stats(admin))}
                    _progress(row)
                    rows.append(row)
        return rows, version
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def run_in_process(args: argparse.Namespace, levels: list[int], images: list[bytes]) -> list[dict]:
    from specdet.runtime import Detector

    rows = []
    with Detector(args.artifact, threads=args.threads) as detector:
        detector.predict([images[0]])  # the session's first run out of the way

        def connect() -> Callable[[bytes], object]:
            return lambda image: detector.predict([image])

        for c in levels:
            row = {"path": "in-process", "protocol": "-", **closed_loop(c, connect, images, args.warmup, args.seconds)}
            _progress(row)
            rows.append(row)
    return rows


def _progress(row: dict) -> None:
    p50 = f"{row['p50_ms']:.1f}" if "p50_ms" in row else "-"
    p99 = f"{row['p99_ms']:.1f}" if "p99_ms" in row else "-"
    batch = row.get("server_batches", {}).get("mean_batch")
    extra = f", mean batch {batch:.2f}" if batch else ""
    print(f"{row['path']} {row['protocol']} c={row['concurrency']}: {row['requests']} requests, {row['errors']} errors, "
          f"{row['images_per_s']:.1f} images/s, p50 {p50} ms, p99 {p99} ms{extra}", file=sys.stderr, flush=True)


def _versions(tritonserver: str) -> dict:
    versions = {"tritonserver": tritonserver}
    for name in ("nvidia-pytriton", "tritonclient", "onnxruntime", "numpy", "specdet"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {**library_versions(), **versions}


def _run(args: argparse.Namespace) -> int:
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError as err:
        raise cli.SpecdetError(f"--concurrency {args.concurrency!r}: give whole numbers like 1,8,32") from err
    if not levels or min(levels) < 1 or max(levels) > 256:
        raise cli.SpecdetError(f"--concurrency {args.concurrency!r}: each level is 1 to 256")
    images = encoded_images(args.images)
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    triton_rows, tritonserver = run_triton(args, levels, images)
    rows = triton_rows + run_in_process(args, levels, images)
    model = args.artifact.name.split(".")[0]
    record = {
        "date": started.isoformat(),
        "command": shlex.join(["python", "-m", "specdet.benchmarks.serve_load", *sys.argv[1:]]),
        "machine": machine.describe(),
        "versions": _versions(tritonserver),
        "artifact": args.artifact.name,
        "note": args.note,
        "settings": {"concurrency": levels, "seconds": args.seconds, "warmup_s": args.warmup,
                     "protocol": args.protocol, "images": len(images),
                     "image_source": str(args.images) if args.images else "scikit-image sample photos as JPEG q90",
                     "image_bytes_mean": round(sum(map(len, images)) / len(images)),
                     "in_process_threads": args.threads, "triton_detector": "python backend (specdet runtime, "
                     "onnxruntime with its default threads), 1 instance per model",
                     "max_batch": args.max_batch, "queue_delay_us": args.queue_delay_us},
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{started.date().isoformat()}-cpu-serve-{model}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(record))
    print(stem.with_suffix(".json"))
    print(stem.with_suffix(".md"))
    return 0


def markdown(record: dict) -> str:
    m, s = record["machine"], record["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    lines = [
        f"# Load run: {record['artifact']} on Triton vs in-process, {record['date']}", "",
        f"`{record['command']}`", "",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({'+'.join(m['simd']) or 'no AVX'}), {m['clock_mhz']:.0f} MHz, "
        f"{m['memory_gb']:.0f} GB; no GPU used",
        f"- Versions: {versions}",
        f"- Requests: one image each ({s['images']} images, {s['image_source']}, mean {s['image_bytes_mean']} bytes), "
        f"closed loop, {s['warmup_s']:g} s warm-up then {s['seconds']:g} s measured per level; a request counts if "
        "it is answered inside the measured window",
        f"- Triton: {s['triton_detector']}; dynamic batching, max batch {s['max_batch'] or 'as the artifact'}, "
        f"queue delay {s['queue_delay_us']} us; the clients run in the same machine as the server",
        f"- In-process: one `Detector` (threads: {s['in_process_threads'] or 'default'}), C threads calling "
        "`predict([bytes])`, one image per call",
    ]
    if record.get("note"):
        lines.append(f"- Note: {record['note']}")
    lines += ["", "| path | protocol | concurrency | requests | errors | images/s | p50 ms | p90 ms | p99 ms | "
              "mean batch (server) | executions by batch size |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in record["results"]:
        batches = r.get("server_batches") or {}
        mean_batch = f"{batches['mean_batch']:.2f}" if batches.get("mean_batch") else "-"
        sizes = " ".join(f"{k}:{v}" for k, v in batches.get("executions_by_batch_size", {}).items()) or "-"
        cells = [f"{r[k]:.1f}" if k in r else "-" for k in ("p50_ms", "p90_ms", "p99_ms")]
        lines.append(f"| {r['path']} | {r['protocol']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
                     f"{r['images_per_s']:.1f} | {' | '.join(cells)} | {mean_batch} | {sizes} |")
    lines += ["", "Mean batch and executions by batch size: the detector model's statistics over the level, warm-up "
              "included (size:executions)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

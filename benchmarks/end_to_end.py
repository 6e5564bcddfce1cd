"""``detect-bench ARTIFACT --end-to-end``: files on disk to probabilities, per number of input workers.

What users who score folders see: JPEG decoding, resizing and cropping
(:mod:`specdet.runtime.pipeline`), the host-to-device copy, normalisation and
the model, with the files in the page cache (each set is read once before
timing). Each worker count (0: the serial loop in the scoring process) is
timed ``repeats`` times over the whole set, scored as ``Detector.predict_files``
scores (:func:`~specdet.runtime.base.score_batches`: one batch in flight). The
report gives images/s (median, min, max), the fraction of the wall time the
scoring process spent in the runner (submitting batches, waiting for scores)
and, on a GPU, the fraction the model kept it busy (CUDA events around the
model on its stream; copies, normalisation and resizing not counted). The probabilities of every worker count are compared
with the serial loop's, and one untimed pass compares the uint8 crops byte by
byte. With ``decode_on_device`` a further row decodes the JPEGs on the
runner's device (:mod:`specdet.runtime.device_decode`: nvJPEG on a GPU, not
Pillow-exact; libjpeg-turbo on the CPU) and resizes them there with Pillow's
arithmetic; the record gives its largest pixel and probability differences
from the Pillow path on the same files.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specdet.benchmarks import loading, machine, variants
from specdet.files import atomic_write
from specdet.runtime.base import score_batches
from specdet.runtime.pipeline import InputPipeline, finish_crops
from specdet.runtime.preprocess import normalise
from specdet.versions import library_versions

FORMAT = "specdet-end-to-end"


def make_photos(folder: Path, count: int, sizes: tuple[int, int] = (500, 1500), qualities: tuple[int, int] = (75, 95),
                processes: int = 1) -> list[Path]:
    """``count`` photo-like JPEGs (smooth colour fields with sensor-like noise; long side and quality drawn
    from ``sizes`` and ``qualities``, seeded by the file's number): what decoding costs on real photos, made
    anywhere without a download, in ``processes`` processes."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"photo-{i:05d}.jpg", i, sizes, qualities) for i in range(count)]
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.starmap(_photo, jobs)
    else:
        for job in jobs:
            _photo(*job)
    return [path for path, *_ in jobs]


def _photo(path: Path, seed: int, sizes: tuple[int, int], qualities: tuple[int, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    long = int(rng.integers(sizes[0], sizes[1] + 1))
    short = int(long * rng.uniform(0.6, 0.8))
    width, height = (long, short) if rng.random() < 0.7 else (short, long)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse, np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=int(rng.integers(*qualities)))


def run(artifact: Path, variant_name: str, files: Sequence[Path], *, workers: Sequence[int], batch_size: int,
        repeats: int = 3, threads: int | None = None, max_pixels: int = 64_000_000, decode_on_device: bool = False,
        resize_on_device: bool = False, command: str = "") -> dict[str, Any]:
    """Time files-to-probabilities of ``artifact`` under ``variant_name`` for each worker count (and, with
    ``resize_on_device``, again with the resizing on the runner's device)."""
    variant = variants.VARIANTS[variant_name]
    paths = [str(p) for p in files]
    pin = variant.device == "cuda"
    if pin:
        import torch

        # The rows compare scores, so they need the same sums every time: cuDNN may pick convolution algorithms
        # whose sums vary run to run, and cuBLAS may too unless its workspace is fixed (read when its first handle
        # is made, so set before the model loads). Seen: 1e-5 in dual_branch_vit_b16's probabilities between passes
        # over the same files with cuDNN alone made deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    loaded = loading.load(variant, artifact, threads)
    runner = loaded.runner
    try:
        spec = runner.info.preprocessing
        step = min(batch_size, runner.info.max_batch or batch_size)
        total_bytes = sum(Path(p).read_bytes().__len__() for p in paths)  # also: the files now in the page cache
        with InputPipeline(spec, max_pixels, step, 0) as serial:  # warm-up: the model at this batch, once
            first = next(serial.batches(paths[:step]))
            crops = runner.infer_crops(first.crops)["probability"]
            # The crops normalised by the runner (on its device) against the float batch normalised by NumPy.
            floats = runner.infer(normalise(first.crops, spec).astype(runner.input_spec().dtype))["probability"]
            same_as_float_input = crops.tobytes() == floats.tobytes()
            # Does the runner give the same scores for the same input every time (the rows compare on it)?
            repeatable = len({runner.infer_crops(first.crops)["probability"].tobytes() for _ in range(20)}) == 1
        rows, reference = [], None
        modes = [(count, False) for count in workers]
        modes += [(max(workers), True)] if max(workers) and resize_on_device else []
        for count, on_device in modes:
            with InputPipeline(spec, max_pixels, step, count, resize_on_device=on_device, pin_memory=pin) as pipeline:
                # A long run starts its workers once: the first pass (starting them) is reported apart.
                first = _timed_pass(runner, pipeline, paths) if count else None
                passes = [_timed_pass(runner, pipeline, paths) for _ in range(repeats)]
            if reference is None:
                reference = passes[0]["probabilities"]
            rates = [len(paths) / p["seconds"] for p in passes]
            differences = [_largest_difference(p["probabilities"], reference) for p in passes + [first or passes[0]]]
            rows.append({
                "workers": count, "resize": "device" if on_device else "worker", "images_per_s": _spread(rates),
                "busy_fraction": _spread([p["busy_s"] / p["seconds"] for p in passes]),
                "gpu_busy_fraction": (_spread([p["gpu_s"] / p["seconds"] for p in passes])
                                      if passes[0]["gpu_s"] is not None else None),
                "seconds": [round(p["seconds"], 4) for p in passes],
                "first_pass_s": round(first["seconds"], 4) if first else None,
                "identical_probabilities": max(differences) == 0.0,
                "largest_probability_difference": max(differences),
            })
        largest = max(workers)
        # The serial loop's crops, hashed once, against the workers' (and the device's) crops.
        serial = _crops_digest(runner, spec, max_pixels, step, 0, paths, False, pin) if largest else None

        def same(on_device: bool) -> bool:
            return _crops_digest(runner, spec, max_pixels, step, largest, paths, on_device, pin) == serial

        record: dict[str, Any] = {
            "format": FORMAT, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "artifact": artifact.name, "architecture": runner.info.architecture,
            "variant": variant.name, "variant_summary": variant.summary, "device": variant.device,
            "facts": loaded.facts, "batch_size": step, "repeats": repeats,
            "images": {"count": len(paths), "megabytes": round(total_bytes / 1e6, 1)},
            "machine": machine.describe(), "versions": library_versions(("numpy", "pillow", "torchvision", "openvino")),
            "rows": rows, "same_as_float_input": same_as_float_input, "repeatable": repeatable,
            "cudnn_deterministic": pin,
            "identical_crops": same(False) if largest else None,
            "identical_device_crops": same(True) if largest and resize_on_device else None,
        }
        if decode_on_device:
            try:
                record["device_decode"] = device_decode_row(runner, spec, max_pixels, step, paths, repeats + 1,
                                                            reference)
            except Exception as error:  # noqa: BLE001 (nvJPEG is optional: its failure must not cost the Pillow rows)
                record["device_decode"] = {"error": f"{type(error).__name__}: {error}"[:500]}
        return record
    finally:
        runner.close()


def _largest_difference(probabilities: list[float | None], reference: list[float | None]) -> float:
    pairs = [(a, b) for a, b in zip(probabilities, reference) if a is not None and b is not None]
    if len(pairs) != sum(p is not None for p in reference):
        return float("inf")  # a file scored in one run and not in the other
    return max((abs(a - b) for a, b in pairs), default=0.0)


class _Timed:
    """A runner whose ``submit_batch`` calls and the waits for their scores add up in :attr:`seconds`."""

    def __init__(self, runner):
        self.runner, self.seconds = runner, 0.0

    def submit_batch(self, batch):
        entered = time.perf_counter()
        wait = self.runner.submit_batch(batch)
        self.seconds += time.perf_counter() - entered

        def timed_wait():
            entered = time.perf_counter()
            scores = wait()
            self.seconds += time.perf_counter() - entered
            return scores

        return timed_wait


def _timed_pass(runner, pipeline: InputPipeline, paths: list[str]) -> dict[str, Any]:
    """One pass over ``paths`` as Detector.predict_files makes it (score_batches: one batch in flight)."""
    timed = _Timed(runner)
    gpu_before = getattr(runner, "gpu_seconds", None)
    probabilities: list[float | None] = []
    start = time.perf_counter()
    for batch, scores in score_batches(timed, pipeline.batches(paths)):
        scored = iter(() if scores is None else scores["probability"].tolist())
        probabilities.extend(None if error else next(scored) for error in batch.errors)
    seconds = time.perf_counter() - start
    gpu = None if gpu_before is None else runner.gpu_seconds - gpu_before
    return {"seconds": seconds, "busy_s": timed.seconds, "gpu_s": gpu, "probabilities": probabilities}


def _crops_digest(runner, spec, max_pixels, step, workers, paths, on_device: bool, gpu: bool) -> str:
    """A hash of every file's error and crop as ``workers`` processes give them (an untimed pass); with
    ``on_device``, of the crops the runner makes from the regions the workers ship (on the GPU with ``gpu``)."""
    digest = hashlib.sha256()
    with InputPipeline(spec, max_pixels, step, workers, resize_on_device=on_device) as pipeline:
        for batch in pipeline.batches(paths):
            digest.update(repr(batch.errors).encode())
            if not on_device:
                crops = batch.crops
            elif gpu:
                crops = runner.device_crops(batch).cpu().numpy()
            else:
                crops = finish_crops(batch)
            digest.update(np.ascontiguousarray(crops).tobytes())
    return digest.hexdigest()


def device_decode_row(runner, spec, max_pixels, step, paths, repeats, reference) -> dict[str, Any]:
    """JPEGs decoded on the runner's device (runtime/device_decode.py: nvJPEG on a GPU), against the Pillow path:
    speed, and the largest pixel and probability differences on the same files."""
    from specdet.runtime.device_decode import DeviceDecoder
    from specdet.runtime.preprocess import image_crop

    decoder = DeviceDecoder(spec, max_pixels, "cuda" if runner.uses_gpu else "cpu")
    rates, probabilities, largest_pixel = [], [], 0
    for number in range(repeats):
        start = time.perf_counter()
        probabilities = []
        for i in range(0, len(paths), step):
            crops, errors, _ = decoder.read(paths[i:i + step])
            scored = iter(runner.infer_device_crops(crops)["probability"].tolist() if len(crops) else ())
            probabilities.extend(None if error else next(scored) for error in errors)
            if number == 0 and len(crops):  # untimed in effect: the first pass is not the median's
                readable = [p for p, error in zip(paths[i:i + step], errors) if error is None]
                pillow = np.stack([image_crop(p, spec, max_pixels)[0] for p in readable]).astype(np.int16)
                largest_pixel = max(largest_pixel, int(np.abs(crops.cpu().numpy().astype(np.int16) - pillow).max()))
        rates.append(len(paths) / (time.perf_counter() - start))
    return {"device": str(decoder.device), "images_per_s": _spread(rates[1:] or rates),
            "largest_pixel_difference": largest_pixel,
            "largest_probability_difference": _largest_difference(probabilities, reference),
            "files_read_by_pillow": decoder.fallbacks // repeats}


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def markdown(record: dict[str, Any]) -> str:
    cpu = record["machine"]
    lines = [
        f"# Files to probabilities: {record['architecture']} ({record['artifact']}), {record['variant']}",
        "",
        f"{record['images']['count']} JPEG files ({record['images']['megabytes']} MB, in the page cache), batch "
        f"{record['batch_size']}, {record['repeats']} passes per row; {cpu['cpu']}, {cpu['logical_cpus']} CPUs "
        f"({', '.join(cpu['simd'])}). {record['date']}.",
        "",
        "| workers | resize on | images/s (median) | min | max | scoring process in the runner | GPU busy (model) "
        "| first pass (workers starting) | largest difference from serial |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    serial = record["rows"][0]["images_per_s"]["median"]
    for row in record["rows"]:
        rate = row["images_per_s"]
        first = "" if row["first_pass_s"] is None else f"{row['first_pass_s']:.2f} s"
        gpu = row.get("gpu_busy_fraction")
        gpu = "" if gpu is None else f"{100 * gpu['median']:.0f} %"
        lines.append(f"| {row['workers']} | {row['resize']} | {rate['median']:.1f} ({rate['median'] / serial:.2f}x) | "
                     f"{rate['min']:.1f} | {rate['max']:.1f} | {100 * row['busy_fraction']['median']:.0f} % | {gpu} | {first} | "
                     f"{row['largest_probability_difference']:.3g} |")
    yes = {True: "yes", False: "NO", None: "not checked"}
    lines += ["", f"- the runner gives the same scores for the same batch, 20 times: {yes[record['repeatable']]}",
              f"- uint8 crops normalised by the runner score as the float batch: {yes[record['same_as_float_input']]}",
              f"- crops from the workers byte-identical to the serial loop: {yes[record['identical_crops']]}",
              f"- crops resized on the device byte-identical to the serial loop: {yes[record['identical_device_crops']]}"]
    decode = record.get("device_decode")
    if decode and decode.get("error"):
        lines += ["", f"Decoding on the device failed: {decode['error']}"]
    elif decode:
        lines += ["", f"JPEGs decoded on {decode['device']} (runtime/device_decode.py; nvJPEG on a GPU, not Pillow-exact), "
                  f"resized there with Pillow's arithmetic: {decode['images_per_s']['median']:.1f} images/s; largest "
                  f"pixel difference from the Pillow path {decode['largest_pixel_difference']}, largest probability "
                  f"difference {decode['largest_probability_difference']:.3g}; files read by Pillow instead "
                  f"{decode['files_read_by_pillow']}."]
    return "\n".join(lines) + "\n"


def write(record: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "end-to-end.json", out / "end-to-end.md"]
    atomic_write(paths[0], lambda f: f.write(json.dumps(record, indent=2).encode()))
    atomic_write(paths[1], lambda f: f.write(markdown(record).encode()))
    return paths

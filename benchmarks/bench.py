"""The benchmark as one library call: :func:`run` (``detect-bench`` is its command line).

Order of work: check the arguments (cheap: files, manifests, batch ranges)
before loading anything; read and preprocess the images once; load every
variant; count the reference's FLOPs; score all images with every variant
and compare with the reference (this also warms each one up); then, per
batch size, time preprocessing on its own and inference of all variants side
by side (:mod:`specdet.benchmarks.timing`). The result is a record (a dict
that :mod:`specdet.benchmarks.report` writes as JSON, Markdown and PNG, and
that ``schema.json`` describes).
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specdet.benchmarks import accuracy, loading, machine, peaks, stats, timing, variants
from specdet.benchmarks import images as image_sets
from specdet.benchmarks.progress import Progress
from specdet.errors import SpecdetError
from specdet.limits import MAX_BATCH, check_count
from specdet.manifest import Manifest
from specdet.runtime.preprocess import preprocess
from specdet.versions import library_versions

FORMAT = "specdet-bench"
VERSION = 1
DEFAULT_SELECTION = "torch-fp32,onnxruntime,tensorrt"
# The built-in default: one tiny detector, exported with the FFT lowering
# that ONNX Runtime on the CPU runs fastest (README, "Choosing an FFT mode").
BUILTIN_MODEL = "dual_branch_tiny"
BUILTIN_FFT = "matmul"


@dataclasses.dataclass
class Config:
    artifacts: list[Path]  # one model: its checkpoint and/or exported files
    backends: str | None = None  # backends and variants, comma-separated; None: DEFAULT_SELECTION, leniently
    batch_sizes: tuple[int, ...] = (1, 8)
    images: Path | None = None  # None: the built-in photos
    max_images: int | None = None
    plan: timing.Plan = dataclasses.field(default_factory=timing.Plan)
    threads: int | None = None
    command: str = ""  # as typed, for the record
    builtin: bool = False  # the artifacts are the built-in default's (made in a temporary folder)
    profile: bool = False  # also record each CPU variant's time per operator type at the smallest batch size


def run(config: Config, progress: Progress | None = None) -> dict[str, Any]:
    progress = progress or Progress(enabled=False)
    started = datetime.datetime.now(datetime.timezone.utc)
    checkpoint, pairs = _plan(config)
    image_set = image_sets.from_folder(config.images, config.max_images) if config.images else image_sets.builtin()
    loaded = _load(checkpoint, pairs, config.threads, progress)
    reference = loaded[0]
    timed = [item for item in loaded if (item.variant, item.runner.artifact) in pairs]
    try:
        image_set, pixels = image_sets.preprocess_set(image_set, reference.runner.info.preprocessing)
        flops = _flops(reference, pixels)
        peak = {**peaks.cpu_peaks(), "measured_sgemm": machine.measured_sgemm()}
        batches = {item.id: _accuracy_batch(item, config.batch_sizes) for item in loaded}
        accuracy_rows = _accuracy(loaded, image_set, pixels, batches, progress)
        preprocessing_rows, latency_rows = _latency(timed, image_set, pixels, reference.runner.info.preprocessing,
                                                    config, progress)
        transfer_rows = _transfers(timed, config, int(pixels.shape[-1]))
        profiles = _profiles(timed, pixels, min(config.batch_sizes), progress) if config.profile else []
    finally:
        for item in loaded:  # what the report needs from a runner (info, artifact) outlives close()
            item.runner.close()
    progress.close()
    described = machine.describe()
    gpu_peak = peaks.gpu_peaks(described["gpus"][0]["name"]) if described["gpus"] else None
    _relate(latency_rows, reference.id, flops, peak["per_precision"],
            {item.id: item.facts.get("precision") for item in loaded if item.variant.device == "cpu"}, gpu_peak)
    return {
        "format": FORMAT,
        "version": VERSION,
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
        "command": config.command,
        "arguments": {
            "artifacts": [str(a) for a in config.artifacts],
            "builtin_default": config.builtin,
            "backends": config.backends or DEFAULT_SELECTION,
            "batch_sizes": list(config.batch_sizes),
            "images": str(config.images) if config.images else None,
            "max_images": config.max_images,
            "warmup": config.plan.warmup,
            "iters": config.plan.iters,
            "seconds": config.plan.seconds,
            "interleave": config.plan.interleave,
            "device_calls": config.plan.device_calls,
            "threads": config.threads,
            "profile": config.profile,
        },
        "machine": described,
        "versions": library_versions(),
        "model": {
            "architecture": reference.runner.info.architecture,
            "checkpoint": str(checkpoint),
            "input": list(reference.runner.input_spec().shape),
            "flops_per_image": flops,
            "flops_method": _flops_note(),
        },
        "cpu_peak": peak,
        "gpu_peak": gpu_peak,
        "timing": {"method": config.plan.describe(), "preprocessing": _preprocessing_note(image_set)},
        "images": image_set.summary(),
        "reference": reference.id,
        "variants": [_variant_row(item, item in timed) for item in loaded],
        "latency": latency_rows,
        "transfers": transfer_rows,
        "preprocessing": preprocessing_rows,
        "accuracy": accuracy_rows,
        "profile": profiles,
        "files": {},
    }


def _plan(config: Config) -> tuple[Path, list[tuple[variants.Variant, Path]]]:
    """The reference checkpoint and the (variant, artifact) pairs to time; every argument checked, nothing loaded."""
    artifacts = [Path(a) for a in config.artifacts]
    for artifact in artifacts:
        if not artifact.is_file():
            raise SpecdetError(f"artifact {artifact} not found: check the path")
        if variants.artifact_kind(artifact) is None:
            raise SpecdetError(f"cannot tell what {artifact.name} is from its suffix: pass .pth, .onnx or .engine files")
    _check_batch_sizes(config.batch_sizes)
    checkpoint = find_reference(artifacts)
    tokens = variants.parse_selection(config.backends or DEFAULT_SELECTION)
    pairs = variants.select(tokens, checkpoint, artifacts, strict=config.backends is not None)
    for artifact in artifacts:
        if artifact != checkpoint and not any(a == artifact for _, a in pairs):
            raise SpecdetError(f"nothing selected runs {artifact.name} here ({variants.why_not(artifact, tokens)}): "
                               "change --backends or drop the file")
    for variant, artifact in pairs:
        if variant.backend != "torch":
            _check_batch_range(artifact, config.batch_sizes)
    check_batch_limit(config.batch_sizes)  # a checkpoint has no batch range of its own
    return checkpoint, pairs


def check_batch_limit(sizes: Sequence[int]) -> None:
    """Every batch size within specdet's limit, before one is allocated (a batch of 1,000,000 photos was 140 GiB)."""
    for size in sizes:
        check_count(size, "--batch-sizes", MAX_BATCH)


def _load(checkpoint: Path, pairs, threads: int | None, progress: Progress) -> list[loading.Loaded]:
    """Every variant loaded; the reference first (always loaded, timed only when selected)."""
    reference = (variants.VARIANTS[variants.REFERENCE], checkpoint)
    to_load = [reference] + [p for p in pairs if p != reference]
    progress.phase("loading", len(to_load))
    loaded = []
    try:
        for variant, artifact in to_load:
            progress.note(f"loading {variant.name} {artifact.name}")
            loaded.append(loading.load(variant, artifact, threads))
            progress.advance()
        _check_same_model(loaded[0], loaded)
    except BaseException:
        for item in loaded:
            item.runner.close()
        raise
    return loaded


def _accuracy(loaded, image_set: image_sets.ImageSet, pixels: np.ndarray, batches: dict, progress) -> list[dict]:
    """Every variant on every image, compared with the reference (the first); this also warms each up."""
    reference = loaded[0]
    progress.phase("accuracy", sum(-(-len(pixels) // batches[item.id]) for item in loaded))
    outputs = {}
    for item in loaded:
        progress.note(f"scoring {len(pixels)} images with {item.id}")
        same = item.runner.info.preprocessing == reference.runner.info.preprocessing
        item_pixels = pixels if same else preprocess(image_set.items, item.runner.info.preprocessing)
        outputs[item.id] = accuracy.score(item.runner, item_pixels, batches[item.id], progress.advance)
    ref_out, ref_threshold = outputs[reference.id], reference.runner.info.threshold
    ref_detection = None
    if image_set.labelled:
        ref_detection = accuracy.detection(ref_out.probability, image_set.labels, image_set.sources, ref_threshold)
    rows = []
    for item in loaded:
        threshold = item.runner.info.threshold
        row = {"variant": item.id, "batch": batches[item.id],
               **accuracy.differences(ref_out, outputs[item.id], ref_threshold, threshold)}
        if ref_detection is not None:
            mine = accuracy.detection(outputs[item.id].probability, image_set.labels, image_set.sources, threshold)
            row["detection"] = accuracy.detection_with_differences(mine, ref_detection)
        rows.append(row)
    return rows


def _latency(timed, image_set: image_sets.ImageSet, pixels: np.ndarray, spec: dict, config: Config, progress):
    """Per batch size: preprocessing on its own, then inference of the timed variants side by side."""
    rounds = None if config.plan.iters is None else config.plan.warmup + config.plan.iters
    progress.phase("timing", None if rounds is None else rounds * (len(timed) + 1) * len(config.batch_sizes))
    preprocessing_rows, latency_rows = [], []
    for batch in config.batch_sizes:
        progress.note(f"timing batch {batch}")
        sources = [image_set.items[i % len(image_set)] for i in range(batch)]
        (pre,) = timing.run([timing.Subject("preprocess", lambda sources=sources: preprocess(sources, spec))], config.plan,
                            progress.advance)
        preprocessing_rows.append({"batch": batch, **stats.summarize(pre.seconds, batch),
                                   "ms_per_image": stats.percentile(pre.seconds, 50) * 1e3 / batch})
        data = _batch_of(pixels, batch)
        subjects = [_subject(item, data, config.plan) for item in timed]
        for item, samples in zip(timed, timing.run(subjects, config.plan, progress.advance)):
            latency_rows.append(_latency_row(item, batch, samples))
    return preprocessing_rows, latency_rows


def _transfers(timed, config: Config, crop: int) -> list[dict]:
    """Where a variant runs on the GPU: the batch's host-device copies, timed apart from the GPU's work."""
    if not any(item.variant.device == "cuda" for item in timed):
        return []
    from specdet.benchmarks import transfers

    return [row for batch in config.batch_sizes for row in transfers.measure(batch, crop, config.plan)]


def _profiles(timed, pixels: np.ndarray, batch: int, progress) -> list[dict]:
    from specdet.benchmarks.profile import op_shares

    data = _batch_of(pixels, batch)
    progress.phase("profiling", len(timed))
    profiles = []
    for item in timed:
        progress.note(f"profiling {item.id} at batch {batch}")
        profiles.append({"variant": item.id, "batch": batch, "ops": op_shares(item, data)})
        progress.advance()
    return profiles


def _batch_of(pixels: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` preprocessed images, cycling through ``pixels`` when there are fewer."""
    return np.ascontiguousarray(np.take(pixels, np.arange(batch) % len(pixels), axis=0))


# ---- arguments ------------------------------------------------------------------


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SpecdetError(f"--batch-sizes {text!r}: give comma-separated whole numbers, e.g. 1,8,32") from None
    _check_batch_sizes(sizes)
    return sizes


def _check_batch_sizes(sizes: Sequence[int]) -> None:
    if not sizes or any(b < 1 for b in sizes):
        raise SpecdetError(f"--batch-sizes {','.join(map(str, sizes))}: give one or more sizes of at least 1")


def _check_batch_range(artifact: Path, sizes: Sequence[int]) -> None:
    batch = Manifest.read(artifact).batch
    low, high = batch.min, batch.max
    bad = [b for b in sizes if b < low or b > high]
    if bad:
        raise SpecdetError(
            f"batch size {bad[0]} is outside what {artifact.name} allows ({low} to {high}): "
            f"drop it from --batch-sizes or re-export with --max-batch {max(sizes)}"
        )


def find_reference(artifacts: Sequence[Path]) -> Path:
    """The checkpoint every figure is compared with: the ``.pth`` given, or the one the manifests name."""
    checkpoints = [a for a in artifacts if variants.artifact_kind(a) == "torch"]
    if len(checkpoints) > 1:
        raise SpecdetError(
            f"{len(checkpoints)} checkpoints given ({', '.join(c.name for c in checkpoints)}): "
            "one model per run; run detect-bench once per model"
        )
    if checkpoints:
        return checkpoints[0]
    tried = []
    for artifact in artifacts:
        for candidate in _parent_checkpoints(artifact):
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    raise SpecdetError(
        "accuracy is measured against the PyTorch checkpoint and none was found"
        + (f" (the manifests name {', '.join(dict.fromkeys(tried))})" if tried else "")
        + ": pass the model's .pth too"
    )


def _parent_checkpoints(artifact: Path) -> list[Path]:
    """Where the checkpoint an artifact came from may be: its manifest's parent chain, as written and beside it."""
    found = []
    parent = Manifest.read(artifact).parent or {}
    while parent:
        path = Path(parent.get("path", ""))
        if variants.artifact_kind(path) == "torch":
            found += [path, artifact.parent / path, artifact.parent / path.name]
        parent = parent.get("parent") or {}
    return list(dict.fromkeys(found))


def _check_same_model(reference: loading.Loaded, loaded: Sequence[loading.Loaded]) -> None:
    want = reference.runner.info.architecture
    for item in loaded:
        if item.runner.info.architecture != want:
            raise SpecdetError(
                f"{item.runner.artifact.name} holds {item.runner.info.architecture}, the checkpoint "
                f"{reference.runner.artifact.name} holds {want}: one model per run"
            )


# ---- helpers --------------------------------------------------------------------


def _accuracy_batch(item: loading.Loaded, sizes: Sequence[int]) -> int:
    limit = item.runner.info.max_batch
    return min(max(sizes), limit) if limit else max(sizes)


def _flops(reference: loading.Loaded, pixels: np.ndarray) -> int | None:
    import torch

    from specdet.benchmarks.flops import flops_per_image
    from specdet.runtime.torch_runner import TorchRunner

    if not isinstance(reference.runner, TorchRunner):
        return None
    return flops_per_image(reference.runner.module, torch.from_numpy(np.ascontiguousarray(pixels[:1])))


def _flops_note() -> str:
    from specdet.benchmarks.flops import NOTE

    return NOTE


def _preprocessing_note(image_set: image_sets.ImageSet) -> str:
    kind = "decoding files, " if image_set.items and not isinstance(image_set.items[0], np.ndarray) else ""
    return f"specdet.runtime.preprocess: {kind}resize, centre crop, normalise; one process, no threads"


def timed_region(item: loading.Loaded) -> str:
    """What a variant's latency row times: ``device`` (GPU work on a batch already on the device, in blocks of
    back-to-back calls; transfers timed apart) or ``host`` (``runner.infer``: host array in, host arrays out)."""
    return "device" if item.variant.device == "cuda" and hasattr(item.runner, "device_call") else "host"


def _subject(item: loading.Loaded, data: np.ndarray, plan: timing.Plan) -> timing.Subject:
    batch = data.astype(item.input_dtype, copy=False)
    if timed_region(item) == "device":
        return timing.Subject(item.id, item.runner.device_call(batch), item.clock(), item.memory_probe(),
                              calls=plan.device_calls)
    return timing.Subject(item.id, lambda: item.runner.infer(batch), item.clock(), item.memory_probe())


def _latency_row(item: loading.Loaded, batch: int, samples: timing.Samples) -> dict[str, Any]:
    return {
        "variant": item.id,
        "batch": batch,
        **stats.summarize(samples.seconds, batch),
        "first_call_ms": None if samples.first_call_s is None else samples.first_call_s * 1e3,
        "timed": timed_region(item),
        "calls_per_sample": samples.calls_per_sample,
        "block_spread": timing.block_spread(samples.seconds),
        "clock": samples.clock,
        "memory": samples.memory,
        "peak_memory_mb": _mb(samples.peak_bytes),
        "peak_memory_increase_mb": _mb(samples.peak_increase_bytes),
    }


def _relate(rows: list[dict], reference_id: str, flops: int | None, peak: dict[str, dict],
            cpu_precision: dict[str, str | None], gpu_peak: dict | None = None) -> None:
    """Speed-up over the reference at the same batch size, and the fraction of the peak: for CPU variants the
    CPU's peak of the row's own precision (an FP32 row against the FP32 peak, BF16 against BF16); for GPU variants
    timed on the device the GPU's FP16 tensor-core peak, whatever the row's precision (one yardstick)."""
    reference = {r["batch"]: r["median_ms"] for r in rows if r["variant"] == reference_id}
    for row in rows:
        base = reference.get(row["batch"])
        row["speedup_vs_reference"] = None if base is None else base / row["median_ms"]
        key = peaks.row_precision(cpu_precision[row["variant"]]) if row["variant"] in cpu_precision else None
        ops = peak[key]["ops_per_s"] if key else None
        if key is None and gpu_peak and row.get("timed") == "device":
            key, ops = "gpu_fp16_tensor", gpu_peak["fp16_tensor_flops_per_s"]
        row["peak_precision"] = key
        row["fraction_of_peak"] = flops * row["images_per_s"] / ops if flops and ops else None


def _variant_row(item: loading.Loaded, timed: bool) -> dict[str, Any]:
    return {
        "id": item.id,
        "variant": item.variant.name,
        "summary": item.variant.summary,
        "artifact": str(item.runner.artifact),
        "timed": timed,
        **item.facts,
        "max_batch": item.runner.info.max_batch,
        "load_seconds": item.load_seconds,
        "load_memory_mb": _mb(item.load_rss_bytes),
    }


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20


# ---- the built-in default -------------------------------------------------------


def builtin_artifacts(folder: Path, max_batch: int) -> list[Path]:
    """A tiny detector (random weights, fixed seed) saved and exported into ``folder``: ``[pth, onnx]``."""
    import torch

    from specdet.export.artifact import export_checkpoint
    from specdet.models import checkpoint, create_model

    torch.manual_seed(0)
    pth = checkpoint.save(create_model(BUILTIN_MODEL), folder / f"{BUILTIN_MODEL}.pth", source="detect-bench (random init)")
    onnx = folder / f"{BUILTIN_MODEL}-{BUILTIN_FFT}.onnx"
    print(f"exporting the built-in {BUILTIN_MODEL} with --fft {BUILTIN_FFT} ...", file=sys.stderr, flush=True)
    export_checkpoint(pth, onnx, fft=BUILTIN_FFT, max_batch=max(max_batch, 8), progress=False)
    return [pth, onnx]

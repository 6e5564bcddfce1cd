"""The detector: images in, probabilities that they are generated (fake) out, on any backend."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specdet.errors import SpecdetError
from specdet.limits import MAX_BATCH, MAX_PIXELS, MAX_PIXELS_CEILING, check_count
from specdet.runtime.base import Runner, RunnerOptions, create_runner, remake_remedy, score_batches
from specdet.runtime.pipeline import Batch, InputPipeline, default_workers
from specdet.runtime.preprocess import ImageSource, check_spec, preprocess

FAKE, REAL = "fake", "real"
# A score that is not a probability (NaN from NaN weights or a manifest whose std underflows, say) is an error
# for that image, in every entry point that labels scores: Detector.score (detect-predict, Ray) and the
# Triton postprocess model (specdet.serve.python_models), through labelled().
NON_FINITE = "the model produced a non-finite score"


def labelled(probability: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """Which scores may be labelled: a probability from 0 to 1 and a finite logit.

    NaN compares false both ways, so a NaN probability would otherwise be "real". An infinite logit is no
    healthy model's (float32 reaches 3e38): it comes from an infinite weight, and its probability of 0 or 1
    is as broken as a NaN.
    """
    probability, logit = np.asarray(probability), np.asarray(logit)
    return (probability >= 0) & (probability <= 1) & np.isfinite(logit)


@dataclasses.dataclass(frozen=True)
class Result:
    """One file's outcome: a probability and label, or the error that kept it from being scored."""

    path: str
    probability: float | None = None
    label: str | None = None
    logit: float | None = None  # the model's output before the sigmoid (exact where the probability saturates)
    error: str | None = None
    frames: int = 1  # frames in the file (animated GIF/WebP/PNG, multi-page TIFF): the first was scored

    @property
    def ok(self) -> bool:
        return self.error is None


class Detector:
    """Score images with an artifact (``.pth`` checkpoint, exported ``.onnx``, or ``.engine``).

    Preprocessing and threshold come from the checkpoint or the manifest, so
    every backend scores the same pixels the same way. ``options`` (and
    ``keywords``, :class:`~specdet.runtime.RunnerOptions` fields set over
    them) say how to run it (see :func:`~specdet.runtime.create_runner`). A
    detector holds its runner's resources until :meth:`close` (or the end of
    a ``with`` block). An image of more than ``max_pixels`` pixels (as stored,
    or once resized) is refused (see :mod:`specdet.runtime.preprocess`);
    ``threads`` is 1 to :data:`~specdet.limits.MAX_THREADS`, a batch size 1 to
    :data:`~specdet.limits.MAX_BATCH`.
    """

    def __init__(
        self,
        artifact: str | os.PathLike,
        backend: str | None = None,
        options: RunnerOptions | None = None,
        *,
        max_pixels: int = MAX_PIXELS,
        **keywords: Any,
    ):
        self.max_pixels = check_count(max_pixels, "max_pixels", MAX_PIXELS_CEILING)
        self._runner = create_runner(artifact, backend, options, **keywords)
        try:
            self._check_input_size(Path(artifact))
        except BaseException:
            self._runner.close()
            raise
        self.backend = self._runner.name
        self.preprocessing = self._runner.info.preprocessing
        self.threshold = self._runner.info.threshold
        self._dtype = np.dtype(self._runner.input_spec().dtype)

    def _check_input_size(self, artifact: Path) -> None:
        preprocessing = self._runner.info.preprocessing
        check_spec(preprocessing)
        spec = self._runner.input_spec()
        crop = preprocessing["crop"]
        if tuple(spec.shape[-2:]) != (crop, crop):
            raise SpecdetError(
                f"{artifact.name} takes {spec.shape[-2]}x{spec.shape[-1]} images but its preprocessing "
                f"crops {crop}x{crop}: {remake_remedy(artifact)}"
            )

    @property
    def runner(self) -> Runner:
        """The backend runner scoring the batches (its ``session``, ``module`` or ``engine``)."""
        return self._runner

    def close(self) -> None:
        """Release the runner's resources; closing twice is safe, predicting afterwards is an error."""
        self._runner.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def label(self, probability: float) -> str:
        return FAKE if probability >= self.threshold else REAL

    def predict(self, images: ImageSource | Sequence[ImageSource], batch_size: int = 8) -> np.ndarray:
        """Probabilities (fake = 1) of one image or a list of paths, PIL images or arrays, as ``[N]`` float32."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        step = self._step(batch_size)
        scores = [
            self._infer(preprocess(list(images[start : start + step]), self.preprocessing, self.max_pixels))
            for start in range(0, len(images), step)
        ]
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)

    def predict_files(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
        decode_device: str | None = None,
    ) -> list[Result]:
        """Score files, in order; a file that cannot be read is recorded with its error and skipped.

        Of a multi-frame file the first frame is scored; its result's ``frames`` says how many it has.
        ``workers`` processes read and decode the files while the model scores
        (:mod:`specdet.runtime.pipeline`; the same pixels as reading them here);
        default (:func:`~specdet.runtime.pipeline.default_workers`): one per CPU when the model runs on a GPU, a
        quarter of the CPUs beside a CPU backend, 0 (read here) for a single batch.

        ``decode_device`` (a torch device, ``"cuda"`` for ``detect-predict --decode gpu``) decodes the JPEGs
        there instead, in this process (:mod:`specdet.runtime.device_decode`: on a GPU, not Pillow's exact
        pixels); the other files are read with Pillow here, and ``workers`` must be None or 0.

        ``progress(n)`` is called after each batch with the number of files it covered.
        """
        paths = [str(p) for p in paths]
        step = self._step(batch_size)
        if decode_device is not None:
            if workers:
                raise SpecdetError("decoding on the device reads the files in this process: leave out workers "
                                   "(--workers) or the device decoding (--decode gpu)")
            return self._predict_on_device(paths, step, progress, decode_device)
        batches = -(-len(paths) // step)
        if workers is None:
            workers = default_workers(self._runner.uses_gpu) if batches > 1 else 0
        results: list[Result] = []
        # Slots sized for the files there are: a --batch-size of 65536 over ten files allocates ten crops.
        size = max(1, min(step, len(paths)))
        with InputPipeline(self.preprocessing, self.max_pixels, size, min(workers, len(paths))) as pipeline:
            for batch, scored in self.scored(pipeline.batches(paths)):
                results.extend(scored)
                if progress is not None:
                    progress(len(batch.paths))
        return results

    def _predict_on_device(self, paths: list[str], step: int, progress: Callable[[int], None] | None,
                           device: str) -> list[Result]:
        from specdet.runtime.device_decode import DeviceDecoder

        decoder = DeviceDecoder(self.preprocessing, self.max_pixels, device)
        results: list[Result] = []
        for first in range(0, len(paths), step):
            chunk = paths[first:first + step]
            crops, errors, frames = decoder.read(chunk)
            scores = self._runner.infer_device_crops(crops) if errors.count(None) else None
            results.extend(self._results(chunk, errors, frames, scores))
            if progress is not None:
                progress(len(chunk))
        return results

    def scored(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, list[Result]]]:
        """Each batch the input pipeline reads with its results, in order; the runner scores a batch while the
        next one is read (:func:`~specdet.runtime.base.score_batches`)."""
        for batch, scores in score_batches(self._runner, batches):
            yield batch, self._results(batch.paths, batch.errors, batch.frames, scores)

    def score(self, batch: Batch) -> list[Result]:
        """The results of one batch the input pipeline read: its readable files scored, the rest with their errors."""
        scores = self._runner.infer_batch(batch) if batch.readable else None
        return self._results(batch.paths, batch.errors, batch.frames, scores)

    def _results(self, paths: list[str], errors: list[str | None], frames: list[int],
                 scores: dict[str, np.ndarray] | None) -> list[Result]:
        """A batch's results from its readable files' scores (None: none was readable)."""
        results = [Result(path, error=error) for path, error in zip(paths, errors)]
        if scores is not None:
            readable = [i for i, error in enumerate(errors) if error is None]
            ok = labelled(scores["probability"], scores["logit"]).tolist()
            for i, good, p, logit in zip(readable, ok, scores["probability"].tolist(), scores["logit"].tolist()):
                if not good:
                    results[i] = Result(paths[i], error=NON_FINITE, frames=frames[i])
                    continue
                results[i] = Result(paths[i], probability=p, label=self.label(p), logit=logit, frames=frames[i])
        return results

    def _step(self, batch_size: int) -> int:
        """The batch size to run: ``batch_size``, capped at the artifact's largest batch."""
        self._runner.ensure_open()  # before any image is read
        check_count(batch_size, "batch_size", MAX_BATCH)
        limit = self._runner.info.max_batch
        return min(batch_size, limit) if limit else batch_size

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._runner.infer(batch.astype(self._dtype, copy=False))["probability"]

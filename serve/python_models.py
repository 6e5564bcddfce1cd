"""The Python-backend models of a specdet Triton repository: ``preprocess``, ``detector`` and ``postprocess``.

Runs inside Triton's Python-backend stub only (``triton_python_backend_utils``
exists there). Each model's ``model.py`` (``templates/model.py``) puts specdet
on ``sys.path`` and calls :func:`create`, which picks the class by the
``specdet_role`` parameter of the model's ``config.pbtxt``: the repository
writer (:mod:`specdet.serve.repository`) owns the contract, this module only
runs it.

Each request is answered on its own: a request that cannot be served (an
unreadable image, an empty batch) gets an error response, and the others of
the same dynamic batch are answered as usual.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from specdet.errors import SpecdetError
from specdet.manifest import Manifest
from specdet.runtime.base import create_runner
from specdet.runtime.detector import FAKE, NON_FINITE, REAL, labelled
from specdet.runtime.preprocess import image_pixels
from specdet.serve.contract import IMAGE, LABEL, LOGIT, PIXELS, PROBABILITY


def create(args: dict[str, str], config: dict[str, Any]):
    """The model object for one instance: ``args`` and ``config`` as the stub passes them to ``initialize``."""
    parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    roles = {"preprocess": PreprocessModel, "detector": DetectorModel, "postprocess": PostprocessModel}
    return roles[parameters["specdet_role"]](args, parameters)


def _error(err: Exception):
    """An error response for one request; specdet's own errors are already one line for the user."""
    text = str(err) if isinstance(err, SpecdetError) else f"{type(err).__name__}: {err}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(" ".join(text.split())))


def _batch(request, name: str) -> np.ndarray:
    array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
    if array.shape[0] == 0:
        raise SpecdetError("an empty batch: send one image or more")
    return array


class PreprocessModel:
    """``image`` (encoded file bytes, [N, 1]) -> ``pixels`` ([N, 3, crop, crop], the artifact's input dtype)."""

    def __init__(self, args: dict[str, str], parameters: dict[str, str]):
        manifest = Manifest.from_dict(json.loads(parameters["specdet_manifest"]), "the model's specdet_manifest")
        self._spec = manifest.preprocessing
        self._dtype = np.dtype(manifest.input.dtype)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = _batch(request, IMAGE).reshape(-1)
                pixels = np.stack([image_pixels(bytes(data), self._spec)[0] for data in images])
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(PIXELS, pixels.astype(self._dtype))]))
            except Exception as err:  # noqa: BLE001 (one request's failure is that request's answer)
                responses.append(_error(err))
        return responses

    def finalize(self) -> None:
        pass


class DetectorModel:
    """The manifest's input -> ``logit``, ``probability`` ([N, 1] float32) with specdet's own runtime.

    The requests of one dynamic batch run as one batch (Triton keeps it
    within ``max_batch_size``, the artifact's batch range).
    """

    def __init__(self, args: dict[str, str], parameters: dict[str, str]):
        folder = Path(args["model_repository"]) / args["model_version"]
        self._runner = create_runner(folder / parameters["specdet_artifact"])
        self._input = self._runner.input_spec().name

    def execute(self, requests):
        responses: list[Any] = [None] * len(requests)
        batches, kept = [], []
        for i, request in enumerate(requests):
            try:
                batches.append(_batch(request, self._input))
                kept.append(i)
            except Exception as err:  # noqa: BLE001
                responses[i] = _error(err)
        if batches:
            try:
                scores = self._runner.infer(np.concatenate(batches))
            except Exception as err:  # noqa: BLE001 (the whole batch failed: each of its requests says so)
                for i in kept:
                    responses[i] = _error(err)
                return responses
            start = 0
            for i, batch in zip(kept, batches):
                rows = slice(start, start + len(batch))
                start += len(batch)
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, scores[name][rows].reshape(-1, 1)) for name in (LOGIT, PROBABILITY)]
                )
        return responses

    def finalize(self) -> None:
        self._runner.close()


class PostprocessModel:
    """``logit``, ``probability`` (the detector's dtype) -> the same as float32, and ``label`` ("fake"/"real")."""

    def __init__(self, args: dict[str, str], parameters: dict[str, str]):
        self._threshold = float(parameters["specdet_threshold"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                logit = _batch(request, LOGIT).astype(np.float32)
                probability = _batch(request, PROBABILITY).astype(np.float32)
                # The Detector's rules: a non-finite score is never labelled (here: the request's error, as its
                # images are one answer); fake at or above the threshold.
                if not labelled(probability, logit).all():
                    raise SpecdetError(NON_FINITE)
                label = np.where(probability >= self._threshold, FAKE.encode(), REAL.encode()).astype(np.object_)
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(LOGIT, logit), pb_utils.Tensor(PROBABILITY, probability),
                     pb_utils.Tensor(LABEL, label)]))
            except Exception as err:  # noqa: BLE001
                responses.append(_error(err))
        return responses

    def finalize(self) -> None:
        pass

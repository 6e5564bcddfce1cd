"""Run an exported detector: ``Detector(artifact).predict(images)`` on torch, onnxruntime, openvino or tensorrt.

Nothing here imports training or export code: preprocessing and threshold
come from the checkpoint or the artifact's manifest (specdet.manifest).
"""

from specdet._shadowing import hand_over
from specdet.runtime.base import BACKENDS, Runner, RunnerOptions, TensorSpec, create_runner
from specdet.runtime.detector import Detector, Result
from specdet.runtime.preprocess import ImageError, load_image, preprocess

__all__ = [
    "BACKENDS",
    "Detector",
    "ImageError",
    "Result",
    "Runner",
    "RunnerOptions",
    "TensorSpec",
    "create_runner",
    "load_image",
    "preprocess",
]

hand_over(__name__)  # imported as a bare `runtime` from the repository root: the installed package instead

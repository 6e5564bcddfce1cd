"""The C++ runtime as a variant: libspecdet_runtime (``runtime/cpp``) run through its C ABI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from specdet.runtime import Runner


class CppRunner(Runner):
    """An ``.onnx`` run by libspecdet_runtime (``runtime/cpp``) through its C ABI: ONNX Runtime's C API,
    no Python in the timed call but the ctypes crossing."""

    name = "onnxruntime"

    def __init__(self, artifact: Path, threads: int | None):
        from specdet.manifest import Manifest
        from specdet.runtime.base import ArtifactInfo
        from specdet.runtime.cpp.binding import CppDetector
        from specdet.runtime.cpp.build import build

        self.library = build().library  # cached by source hash: built once per machine
        self.threads = threads
        options = {"intra_op_threads": threads} if threads else {}
        self.detector = CppDetector(self.library, artifact, **options)
        manifest = Manifest.from_dict(json.loads(self.detector.get_string("manifest")), f"{artifact.name} (as C++ read it)")
        super().__init__(artifact, ArtifactInfo.from_manifest(manifest))

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.detector.infer(batch)

    def _close(self) -> None:
        self.detector.close()


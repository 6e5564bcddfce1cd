"""The versions of the libraries an artifact or a measurement depends on, for manifests and reports."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib import metadata

_VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxconverter-common", "timm", "transformers", "specdet")


def library_versions(also: Sequence[str] = ()) -> dict[str, str]:
    """Python's version and each installed library's (those not installed are left out); ``also``: more
    distributions a measurement depends on (numpy, Pillow, triton, ...)."""
    versions = {"python": platform.python_version()}
    for name in (*_VERSIONED, *also):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions

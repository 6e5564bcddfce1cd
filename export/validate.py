"""Check an exported ONNX file against the PyTorch module it came from.

Checks run in a fixed order and stop at the first failure, so the error
names the most basic thing that is wrong: output names, then the dynamic
batch axis, then output shapes, then values within tolerance. Values are
compared on the same inputs in ONNX Runtime and in PyTorch (the module as the
user wrote it, without any lowering).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch

from specdet.errors import ExportValidationError

# FP32 tolerance on every output: |onnx - torch| <= ATOL + RTOL * |torch|.
# 1e-4 absolute is the project's bar on probabilities.
ATOL = 1e-4
RTOL = 1e-4


@dataclasses.dataclass
class OutputDifference:
    name: str
    max_abs: float
    max_rel: float  # relative to max(|torch|, 1e-6), elementwise


@dataclasses.dataclass
class ValidationReport:
    batch_sizes: list[int]
    outputs: list[OutputDifference]
    atol: float
    rtol: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        return [f"  {o.name}: max abs diff {o.max_abs:.3e}, max rel diff {o.max_rel:.3e}" for o in self.outputs]


def torch_outputs(module: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        out = module(torch.from_numpy(x))
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [o.detach().float().numpy() for o in out]


def validate(
    onnx_path: str,
    module: torch.nn.Module,
    inputs: Sequence[np.ndarray],
    input_name: str,
    output_names: Sequence[str],
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> ValidationReport:
    """Raise :class:`ExportValidationError` unless ``onnx_path`` reproduces ``module`` on ``inputs``."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

    names = [o.name for o in session.get_outputs()]
    if names != list(output_names):
        raise ExportValidationError(f"output names are {names}, expected {list(output_names)}")
    for out in session.get_outputs():
        if not out.shape or isinstance(out.shape[0], int):
            raise ExportValidationError(f"output {out.name!r} has a fixed batch axis {out.shape}; expected a dynamic one")

    worst = {name: OutputDifference(name, 0.0, 0.0) for name in names}
    for x in inputs:
        expected = torch_outputs(module, x)
        got = session.run(None, {input_name: x})
        for name, e, g in zip(names, expected, got):
            if e.shape != g.shape:
                raise ExportValidationError(f"output {name!r} has shape {g.shape} at batch {len(x)}, PyTorch gives {e.shape}")
            diff = np.abs(g.astype(np.float64) - e.astype(np.float64))
            rel = diff / np.maximum(np.abs(e), 1e-6)
            w = worst[name]
            w.max_abs = max(w.max_abs, float(diff.max(initial=0.0)))
            w.max_rel = max(w.max_rel, float(rel.max(initial=0.0)))
            if not np.all(diff <= atol + rtol * np.abs(e)):
                raise ExportValidationError(
                    f"output {name!r} differs from PyTorch by up to {w.max_abs:.3e} (relative {w.max_rel:.3e}) "
                    f"at batch {len(x)}, above the tolerance {atol:g} + {rtol:g}*|value|; try another --fft mode"
                )
    return ValidationReport([len(x) for x in inputs], list(worst.values()), atol, rtol)

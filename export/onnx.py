"""``export_onnx``: any PyTorch module with FFTs to a validated ONNX file with a dynamic batch.

The module's forward runs inside :class:`ComplexLowering` while
``torch.onnx.export`` (the dynamo exporter) traces it, so ``torch.fft`` code
and complex arithmetic come out as real ONNX ops. Then the file is checked
(ONNX checker, shape inference) and validated in ONNX Runtime against the
module as written. The file is written beside its destination and moved into
place only when everything passed: a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from specdet.errors import SpecdetError
from specdet.export import plugin_ops
from specdet.export.lowering import ComplexLowering
from specdet.export.quiet import quiet_exporter
from specdet.export.validate import ATOL, RTOL, ValidationReport, torch_outputs, validate
from specdet.files import partial_path
from specdet.models import spectral
from specdet.progress import bar as progress_bar

FFT_MODES = ("dft", "matmul", "plugin")
# What ``--fft auto`` picks for ONNX Runtime on the CPU: the fastest mode in
# the measurements quoted in the README ("Choosing an FFT mode").
AUTO_FFT = "matmul"
DEFAULT_OPSET = 18
MIN_OPSET = 17  # ONNX DFT and LayerNormalization


@dataclasses.dataclass
class ExportResult:
    path: Path
    fft: str
    opset: int
    input_name: str
    output_names: list[str]
    max_batch: int
    validation: ValidationReport
    seconds: float  # every stage, start to finish
    precision: object = None  # FP16 and INT8 exports: a specdet.export.precision.report.PrecisionReport
    stages: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per stage, when there are several

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


class _Lowered(torch.nn.Module):
    """Runs ``module`` with its FFTs lowered as ``fft`` says."""

    def __init__(self, module: torch.nn.Module, fft: str):
        super().__init__()
        self.module, self.fft = module, fft

    def forward(self, x: torch.Tensor):
        with contextlib.ExitStack() as stack:
            if self.fft == "plugin":
                # Our spectral ops become specdet nodes; any other FFT code
                # in the module gets the matmul lowering.
                stack.enter_context(spectral.use_custom_ops())
            stack.enter_context(ComplexLowering("dft" if self.fft == "dft" else "matmul"))
            return self.module(x)


def resolve_fft(fft: str) -> str:
    if fft == "auto":
        return AUTO_FFT
    if fft not in FFT_MODES:
        raise SpecdetError(f"unknown FFT mode {fft!r}; choose one of auto, {', '.join(FFT_MODES)}")
    return fft


def _trace(module: torch.nn.Module, path: Path, example: torch.Tensor, fft: str, opset: int,
           input_name: str, output_names: Sequence[str], max_batch: int) -> None:
    try:
        # torch.export needs max > min for a dynamic axis; the manifest and the
        # runtime enforce the real limit, so a max batch of 1 traces as 1..2.
        batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
        with quiet_exporter():
            torch.onnx.export(
                _Lowered(module, fft), (example,), str(path), dynamo=True, opset_version=opset, verbose=False,
                input_names=[input_name], output_names=list(output_names), dynamic_shapes={"x": {0: batch}},
                custom_translation_table=plugin_ops.translation_table() if fft == "plugin" else None,
                external_data=False,
            )
    except SpecdetError:
        raise
    except Exception as err:  # the exporter wraps the cause in several layers
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise SpecdetError(
            f"torch.onnx.export failed with --fft {fft}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''} "
            "(rerun with --debug for the full trace)"
        ) from err


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    example_input: torch.Tensor,
    fft: str = "auto",
    opset: int = DEFAULT_OPSET,
    max_batch: int = 32,
    input_name: str = "input",
    output_names: Sequence[str] | None = None,
    validation_inputs: Sequence[np.ndarray] | None = None,
    atol: float = ATOL,
    rtol: float = RTOL,
    progress: bool = True,
) -> ExportResult:
    """Export ``model`` to ``path`` and validate it against PyTorch.

    ``example_input`` fixes every dimension but the first (batch), which is
    dynamic from 1 to ``max_batch``. ``output_names`` default to ``output``
    (one output) or ``output_0``, ``output_1``, ... ``validation_inputs``
    default to ``example_input`` and a batch of one random input.
    """
    fft = resolve_fft(fft)
    if opset < MIN_OPSET:
        raise SpecdetError(f"opset {opset} is too old: DFT and LayerNormalization need opset {MIN_OPSET} or newer")
    if not 1 <= example_input.shape[0] <= max_batch:
        raise SpecdetError(f"the example input's batch ({example_input.shape[0]}) must be between 1 and max batch {max_batch}")
    path = Path(path)
    if path.is_dir():
        raise SpecdetError(f"{path} is a directory; give a file name ending in .onnx")
    model = model.eval()
    example = example_input.detach().float()
    # torch.export specialises an axis of size 1 to a constant: trace with two.
    trace_example = example if example.shape[0] > 1 else example.expand(2, *example.shape[1:]).contiguous()
    n_outputs = len(torch_outputs(model, example[:1].numpy()))
    if output_names is None:
        output_names = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    if len(output_names) != n_outputs:
        raise SpecdetError(f"the model has {n_outputs} outputs but {len(output_names)} output names were given")
    if validation_inputs is None:
        generator = torch.Generator().manual_seed(0)
        single = torch.randn((1, *example.shape[1:]), generator=generator)
        validation_inputs = [example.numpy(), single.numpy()]

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    start = time.perf_counter()
    steps = progress_bar(enabled=progress, total=3, desc=f"export ({fft})", unit="step", leave=False)
    try:
        steps.set_postfix_str("tracing")
        _trace(model, tmp, trace_example, fft, opset, input_name, output_names, max_batch)
        steps.update()
        steps.set_postfix_str("checking")
        if fft == "plugin":
            onnx.save(plugin_ops.attach_function_bodies(onnx.load(str(tmp)), opset), str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        steps.update()
        steps.set_postfix_str("validating")
        report = validate(str(tmp), model, validation_inputs, input_name, output_names, atol=atol, rtol=rtol)
        steps.update()
        os.replace(tmp, path)
    finally:
        steps.close()
        tmp.unlink(missing_ok=True)
    return ExportResult(path, fft, opset, input_name, list(output_names), max_batch, report, time.perf_counter() - start)

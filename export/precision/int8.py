"""INT8 QDQ ONNX files: static quantisation with ONNX Runtime, FP32 islands chosen by measurement.

The file is the standard QDQ form (``QuantizeLinear``/``DequantizeLinear``
pairs around FP32 ops, INT8 weight initializers behind ``DequantizeLinear``):
ONNX Runtime and OpenVINO run it as INT8 kernels on the CPU, and TensorRT
reads it as explicit quantisation. Choices, each for a reason:

- weights INT8, per output channel, symmetric, biases FP32; activations INT8 symmetric
  (zero point 0: TensorRT's explicit quantisation accepts no other), ranges
  from MinMax calibration on the calibration images, computed once and cached
  for every trial;
- only :data:`QUANTIZED_OPS` are quantised: the products are where INT8 is
  faster, Softmax and LayerNormalization are the measured candidates;
  quantising the residual additions and elementwise arithmetic too doubled
  the probability error of ``dual_branch_tiny`` (0.031 vs 0.003, every
  island in FP32) for no speed;
- FP32 islands, as :mod:`specdet.export.precision.fp16` chooses them: the output head
  and plugin nodes always; the spectral lowering (the ``matmul`` FFT's DFT
  products), ``Softmax`` and ``LayerNormalization`` only where releasing them
  to INT8 moves a probability further than the tolerance from the FP32 file
  on the calibration images.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from specdet.compare import Agreement
from specdet.errors import SpecdetError
from specdet.export.precision.graph import name_nodes
from specdet.export.precision.islands import Group, find_groups
from specdet.export.precision.measure import agreement, run_model
from specdet.export.precision.report import PrecisionReport
from specdet.export.precision.search import search_islands

# Largest probability difference (INT8 file vs FP32 file) the file may leave on the calibration images: the
# issue's fidelity goal. INT8 moves the tiny detectors' probabilities by 1e-3 to 1e-2, FP16 by 1e-5.
DEFAULT_TOLERANCE = 0.01
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "Softmax", "LayerNormalization")
# Why each group stays FP32 when it does (find_groups' reasons are about FP16).
_REASONS = {
    "output head": "the classifier layer and the sigmoid: forced FP32, they cost nothing and set the probability",
    "plugin ops": "specdet plugin nodes: the TensorRT plugin and the local-function fallback take FP32",
    "spectral (DFT)": "ONNX DFT and its spectral arithmetic: no INT8 DFT kernel anywhere",
    "spectral": "the matmul FFT lowering: DFT-matrix products over image-sized axes",
    "LayerNormalization": "mean and variance over the hidden size",
    "Softmax": "exponentials and their sums",
}
_IMAGE_INPUT_REASON = ("the op reading the image: forced FP32, OpenVINO's CPU plugin computes it wrongly on signed INT8 "
                       "activations")
_AFTER_RELU_REASON = ("ops whose input is a ReLU's output: forced FP32, OpenVINO's CPU plugin computes them wrongly "
                      "on signed INT8 activations")


@dataclasses.dataclass
class Int8Report(PrecisionReport):
    quantizer: str
    scheme: str
    # The written file in each other CPU runtime installed ("openvino 2026.4.1"), or why it cannot run there.
    other_runtimes: dict[str, Agreement | str]
    quantized_nodes: int  # nodes of QUANTIZED_OPS running on INT8 inputs
    # ``agreement`` (the shared field): the written file vs the FP32 file, both in ONNX Runtime on the CPU

    def lines(self) -> list[str]:
        a = self.agreement
        out = [
            f"  INT8 vs FP32 on {a.images} calibration images ({self.calibration}): largest probability difference "
            f"{a.max_prob_diff:.2e}, largest logit difference {a.max_logit_diff:.2e}, decision agreement "
            f"{100 * a.decision_agreement:.1f}% (ONNX Runtime)",
            f"  {self.quantized_nodes} nodes quantised ({self.scheme}); FP32 islands:",
            *self._island_lines(),
        ]
        for runtime, b in self.other_runtimes.items():
            if isinstance(b, str):
                out.append(f"  in {runtime}: {b}")
                continue
            verdict = "within" if b.max_prob_diff <= self.tolerance else "OUTSIDE"
            out.append(f"  in {runtime}: largest probability difference {b.max_prob_diff:.2e}, decision agreement "
                       f"{100 * b.decision_agreement:.1f}% ({verdict} the tolerance; islands are chosen in ONNX Runtime)")
        return out + self._released_lines("INT8")


def candidate_groups(model: onnx.ModelProto) -> list[Group]:
    """FP16's forced and candidate groups that hold a quantised op (the others change nothing in INT8), and the
    ops reading a ReLU's output or the image, forced FP32."""
    by_name = {n.name: n for n in model.graph.node}
    groups = [
        dataclasses.replace(g, reason=_REASONS.get(g.name, g.reason))
        for g in find_groups(model)
        if any(by_name[n].op_type in QUANTIZED_OPS for n in g.nodes)
    ]
    taken = {n for g in groups for n in g.nodes}
    made_by = {out: n for n in model.graph.node for out in n.output}
    after_relu = [n.name for n in model.graph.node
                  if n.op_type in QUANTIZED_OPS and n.name not in taken and _from_relu(made_by, n.input[0])]
    if after_relu:
        # ONNX Runtime runs them right in INT8, but OpenVINO 2026.4's CPU plugin computes an op wrongly when
        # its signed INT8 input is a ReLU's output (directly or through pooling and reshapes): one such Gemm
        # of dual_branch_tiny alone moved OpenVINO's probabilities by 0.097 against 4e-4 in ONNX Runtime, and
        # the five together were all of the gap. Signed, zero-point-0 activations are what TensorRT needs, so
        # the one file keeps them and leaves these ops in FP32 instead.
        groups.append(Group("after ReLU", _AFTER_RELU_REASON, after_relu, forced=True))
    inputs = {i.name for i in model.graph.input}
    on_input = [n.name for n in model.graph.node
                if n.op_type in QUANTIZED_OPS and n.name not in taken and set(n.input) & inputs]
    if on_input:
        # The same for the op reading the image itself: dual_branch_vit_b16's patch embedding in INT8 put
        # OpenVINO 0.021 away from ONNX Runtime on the same file, its 98 other INT8 ops together 0.003 (found
        # by bisection). One convolution over the image: about 1% of a ViT's FLOPs.
        groups.append(Group("image input", _IMAGE_INPUT_REASON, on_input, forced=True))
    return groups


# Ops a ReLU's output passes through unchanged in sign: an INT8 op behind them still reads a ReLU's output.
_SIGN_KEEPING = {"AveragePool", "MaxPool", "GlobalAveragePool", "Reshape", "Transpose", "Flatten", "Squeeze",
                 "Unsqueeze", "ReduceMean", "Gather", "Slice", "Identity"}


def _from_relu(made_by: dict[str, onnx.NodeProto], tensor: str) -> bool:
    while tensor in made_by:
        node = made_by[tensor]
        if node.op_type == "Relu":
            return True
        if node.op_type not in _SIGN_KEEPING:
            return False
        tensor = node.input[0]
    return False


def to_int8(
    model: onnx.ModelProto,
    batches: Sequence[np.ndarray],
    *,
    input_name: str,
    threshold: float,
    calibration: str,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, Int8Report]:
    """Quantise the FP32 ``model`` to QDQ INT8, choosing its FP32 islands by measurement on ``batches``.

    Raises :class:`SpecdetError` if even the most conservative file (every
    candidate in FP32) misses ``tolerance``.
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise SpecdetError("the model is already quantised: quantise its FP32 export instead")
    name_nodes(model)  # nodes_to_exclude is by name
    say("finding sensitive ops")
    groups = candidate_groups(model)
    reference = run_model(model.SerializeToString(), batches, input_name, fp16=False)
    with tempfile.TemporaryDirectory(prefix="specdet-int8-") as tmp:
        # quantize_static is given a file: given a ModelProto, it moves the weights of that very proto to
        # external data in a folder it deletes afterwards.
        source, cache = Path(tmp) / "fp32.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, str(source))
        axes = _left_weight_axes(model)

        def attempt(fp32_groups: list[Group]) -> tuple[onnx.ModelProto, Agreement]:
            quantized = _quantize(source, batches, input_name, [n for g in fp32_groups for n in g.nodes], cache,
                                  axes, Path(tmp) / "int8.onnx")
            outputs = run_model(quantized.SerializeToString(), batches, input_name, fp16=False)
            return quantized, agreement(reference, outputs, threshold)

        say("calibrating, baseline: every candidate in FP32")
        found = search_islands(groups, attempt, tolerance, precision="INT8", fallback="FP32 or FP16",
                               flag="--int8-tolerance", say=say)
        elsewhere = _other_runtimes(found.model, Path(tmp) / "final.onnx", batches, input_name, reference, threshold)
    report = Int8Report(
        quantizer=f"onnxruntime.quantization {ort.__version__}",
        scheme="QDQ; weights int8 per-channel symmetric, biases fp32; activations int8 symmetric, MinMax calibration",
        other_runtimes=elsewhere,
        tolerance=tolerance,
        calibration=calibration,
        islands=found.islands,
        released=found.released,
        trials=found.trials,
        agreement=found.agreement,
        quantized_nodes=quantized_nodes(found.model),
        nodes=len(model.graph.node),
        seconds=time.perf_counter() - start,
    )
    return found.model, report


def quantized_nodes(model: onnx.ModelProto) -> int:
    """Nodes of :data:`QUANTIZED_OPS` with an input coming out of a ``DequantizeLinear``."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return sum(n.op_type in QUANTIZED_OPS and any(i in dequantized for i in n.input) for n in model.graph.node)


def _other_runtimes(model: onnx.ModelProto, path: Path, batches: Sequence[np.ndarray], input_name: str,
                    reference: dict[str, np.ndarray], threshold: float) -> dict[str, Agreement | str]:
    """The written file against the FP32 file in OpenVINO at FP32, when installed (the ``openvino`` extra).

    OpenVINO runs QDQ files its own way, with integer kernels where ONNX Runtime's QDQ arithmetic is exact
    (see :func:`candidate_groups`), so its agreement can differ. It is recorded, not used to choose islands:
    the file is for ONNX Runtime and TensorRT as well.
    """
    try:
        import openvino
    except ImportError:
        return {}
    runtime = f"openvino {openvino.get_version().split('-')[0]}"
    onnx.save(model, str(path))
    try:
        compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except RuntimeError as err:  # plugin nodes, DFT: OpenVINO reads only --fft matmul files
        return {runtime: f"cannot load the file: {str(err).strip().splitlines()[-1][:200]}"}
    results = [compiled({input_name: batch}) for batch in batches]
    outputs = {o.get_any_name(): np.concatenate([r[o] for r in results]).astype(np.float64) for o in compiled.outputs}
    return {runtime: agreement(reference, outputs, threshold)}


def _left_weight_axes(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """Per-channel axis 0 for the weights a MatMul takes on the left (``W @ x``: the FFT lowering's DFT matrices).

    onnxruntime quantises every MatMul weight along axis 1, the output channels of ``x @ W`` but the summed
    axis of ``W @ x``. ONNX Runtime still computes that exactly (it dequantises, then multiplies), but a scale
    that varies along the summed axis cannot leave an integer product: OpenVINO moved dual_branch_tiny's
    probabilities by 0.09 with them. Axis 0 is ``W @ x``'s output channels.
    """
    weights = {i.name for i in model.graph.initializer if len(i.dims) == 2}
    return {n.input[0]: [{"axis": 0}] for n in model.graph.node if n.op_type == "MatMul" and n.input[0] in weights}


def _quantize(model: Path, batches: Sequence[np.ndarray], input_name: str, exclude: list[str],
              cache: Path, axes: dict[str, list[dict]], path: Path) -> onnx.ModelProto:
    """``model`` quantised to QDQ at ``path``, the ``exclude`` nodes left FP32, ``axes`` the per-tensor
    quantisation axes (:func:`_left_weight_axes`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    # onnxruntime.quantization logs advice to the root logger (pre-processing, rank-1 LayerNorm weights
    # per-channel) that a user of detect-export cannot act on; errors still raise.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_static(
            model, path, Images(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=exclude, calibration_cache_path=cache,
            # Biases stay FP32: TensorRT dequantises only 8-bit and smaller types, not ORT's INT32 biases.
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": True, "QuantizeBias": False,
                           "TensorQuantOverrides": axes},
        )
    finally:
        logging.disable(previous)
    return onnx.load(str(path))

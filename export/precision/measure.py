"""Running FP32 and FP16 files in ONNX Runtime on the calibration images, and comparing their outputs.

ONNX Runtime's CPU provider has FP16 kernels for few ops and runs the others
in FP32 between casts, so arithmetic inside a node is FP32: the measurement
bounds storage and range effects (see :func:`storage_twin`), not TensorRT's
own FP16 kernels. ONNX Runtime 1.32's layout optimizer (``ORT_ENABLE_ALL``)
crashes on FP16 graphs, so FP16 files run at ``ORT_ENABLE_EXTENDED``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from specdet.compare import Agreement, compare
from specdet.export.precision.graph import FLOAT16


def session(model_bytes: bytes, *, fp16: bool, unoptimised: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if unoptimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif fp16:  # ORT 1.32's layout (NCHWc) optimizer crashes on FP16 graphs: stop one level below it
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def storage_twin(model: onnx.ModelProto) -> bytes:
    """``model`` serialised with every FP16 tensor rounded to FP16 when ONNX Runtime's CPU provider runs it.

    ONNX Runtime runs an FP16 node without a CPU FP16 kernel (MatMul, Conv,
    Exp, ...) in FP32 between casts, and then drops the FP32 -> FP16 -> FP32
    cast pairs between such nodes: activations are never rounded and never
    overflow. Two ``Identity`` nodes (which have FP16 kernels) after each
    FP16 output force the rounding (ONNX Runtime moves a lone FP16 node
    between FP32 ones to FP32); the twin runs unoptimised so that they stay.
    Arithmetic inside a node remains FP32, so this measures FP16 storage and
    range, the way TensorRT stores tensors between layers.

    ``model`` is changed in place while it is serialised (a copy would copy
    the weights) and restored afterwards, also when serialising fails.
    """
    graph = model.graph
    fp16 = {v.name for v in graph.value_info if v.type.tensor_type.elem_type == FLOAT16}
    count = len(graph.node)
    renamed: list[tuple[onnx.NodeProto, int, str]] = []
    try:
        added = []
        for node in graph.node[:count]:
            if node.op_type in ("Identity", "Constant", "Shape"):
                continue
            for i, out in enumerate(node.output):
                if out in fp16:
                    node.output[i] = f"{out}__fp16"
                    renamed.append((node, i, out))
                    # Two in a row: ORT runs an *isolated* FP16 node in FP32 and drops its casts.
                    added.append(helper.make_node("Identity", [f"{out}__fp16"], [f"{out}__fp16b"], name=f"{out}__round"))
                    added.append(helper.make_node("Identity", [f"{out}__fp16b"], [out], name=f"{out}__roundb"))
        graph.node.extend(added)
        return model.SerializeToString()
    finally:
        del graph.node[count:]
        for node, i, out in renamed:
            node.output[i] = out


def run_model(model_bytes: bytes, batches: Sequence[np.ndarray], input_name: str, *, fp16: bool,
              unoptimised: bool = False) -> dict[str, np.ndarray]:
    """Every output of the file on every batch, concatenated, in float64."""
    runner = session(model_bytes, fp16=fp16, unoptimised=unoptimised)
    names = [o.name for o in runner.get_outputs()]
    results = [runner.run(names, {input_name: batch}) for batch in batches]
    return {name: np.concatenate([r[i] for r in results]).astype(np.float64) for i, name in enumerate(names)}


def agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], threshold: float) -> Agreement:
    """The candidate file's outputs (``logit``, ``probability``) against the reference's, at one threshold."""
    return compare(reference["probability"], candidate["probability"], threshold, threshold,
                   reference_logits=reference["logit"], candidate_logits=candidate["logit"])

"""Which nodes may stay FP32: forced islands, measured candidates, and range islands found on calibration images.

1. *Forced islands*, for a reason that no measurement changes: the output
   head, ``specdet`` plugin nodes (their fallback bodies and our TensorRT
   plugin take FP32), ONNX ``DFT`` nodes and the spectral arithmetic around
   them (TensorRT's cuFFT plugin has no FP16 at non-power-of-two lengths such
   as 224, and ONNX Runtime has no FP16 DFT kernel), and *range* islands:
   nodes whose inputs or outputs exceed :data:`RANGE_LIMIT` in magnitude on
   the calibration images (FP16 ends at 65,504) or use constants beyond
   FP16's range.
2. *Candidate islands*, the ops known to be sensitive in FP16: the spectral
   lowering (the ``matmul`` FFT's constant DFT products and the masking or
   magnitude arithmetic between and after them), ``LayerNormalization``,
   ``Softmax`` and large reductions (:data:`LARGE_REDUCTION` elements or more).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from specdet.export.precision.graph import (
    FLOAT,
    FP16_MAX,
    constant_values,
    consumers,
    name_nodes,
    producers,
    shapes,
    small_constants,
    without_weights,
)
from specdet.export.precision.measure import session
from specdet.export.precision.spectral import REDUCTIONS, SPECTRAL_PASS, spectral_region
from specdet.tensorrt import PLUGIN_DOMAIN

# Magnitude above which a node's inputs or outputs make it a range island (FP16 max: 65,504).
RANGE_LIMIT = 4096.0
# Reductions over at least this many elements are candidates.
LARGE_REDUCTION = 1024


@dataclasses.dataclass
class Group:
    """A set of nodes that stays FP32 or goes FP16 together."""

    name: str
    reason: str
    nodes: list[str]
    forced: bool  # True: FP32 whatever the measurement says


def output_head(graph: onnx.GraphProto, depth: int = 6) -> list[str]:
    """The last layer: nodes computing the graph outputs, back to and including the first MatMul/Gemm.

    In FP16 a probability near 1 moves in steps of 5e-4; the outputs are FP32
    anyway, and the classifier layer and its sigmoid cost nothing in FP32.
    """
    made_by = producers(graph)
    constant = constant_values(graph)
    head: set[str] = set()
    frontier = [(made_by[o.name], 0) for o in graph.output if o.name in made_by]
    while frontier:
        node, level = frontier.pop()
        if node.name in head or level > depth:
            continue
        head.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            continue
        if node.op_type in SPECTRAL_PASS or node.op_type in REDUCTIONS or node.op_type in ("Sigmoid", "Softmax"):
            frontier += [(made_by[i], level + 1) for i in node.input if i in made_by and i not in constant]
    return [n.name for n in graph.node if n.name in head]


def find_groups(model: onnx.ModelProto) -> list[Group]:
    """Forced and candidate FP32 groups of ``model`` (range islands come from measurement, later)."""
    name_nodes(model)
    graph = model.graph
    groups: list[Group] = []
    head = output_head(graph)
    groups.append(Group(
        "output head", "the classifier layer and the sigmoid: FP16 would quantise probabilities in steps of up "
        "to 5e-4, at no speed gain", head, forced=True,
    ))
    taken: set[str] = set(head)

    plugin = [n.name for n in graph.node if n.domain == PLUGIN_DOMAIN]
    if plugin:
        groups.append(Group(
            "plugin ops", "specdet plugin nodes: the TensorRT plugin and the local-function fallback take FP32",
            plugin, forced=True,
        ))
        taken.update(plugin)
    region, has_dft = spectral_region(model)
    region = [n for n in region if n not in taken]
    if region and has_dft:
        groups.append(Group(
            "spectral (DFT)", "ONNX DFT and its spectral arithmetic: TensorRT's cuFFT plugin has no FP16 at "
            "non-power-of-two lengths, ONNX Runtime no FP16 DFT", region, forced=True,
        ))
    elif region:
        groups.append(Group(
            "spectral", "the matmul FFT lowering (DFT-matrix products, masks, magnitudes, spectral means)",
            region, forced=False,
        ))
    taken.update(region)

    for name, ops, reason in (
        ("LayerNormalization", {"LayerNormalization"}, "mean and variance over the hidden size"),
        ("Softmax", {"Softmax", "LogSoftmax"}, "exponentials and their sums"),
    ):
        nodes = [n.name for n in graph.node if n.op_type in ops and n.name not in taken]
        if nodes:
            groups.append(Group(name, reason, nodes, forced=False))
            taken.update(nodes)
    known_shapes, constants = shapes(model), small_constants(graph)
    large = []
    for node in graph.node:
        if node.op_type in REDUCTIONS and node.name not in taken:
            count = _reduced_elements(node, known_shapes, constants)
            if count is None or count >= LARGE_REDUCTION:
                large.append(node.name)
    if large:
        groups.append(Group(
            "large reductions", f"sums or means over {LARGE_REDUCTION} or more elements", large, forced=False,
        ))
    return groups


def _reduced_elements(node: onnx.NodeProto, shapes: dict[str, list], constants: dict[str, np.ndarray]) -> int | None:
    """How many elements each output of a reduction sums over; ``None`` when a size is not known."""
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    if node.op_type.startswith("Global"):
        dims = shape[2:]
    else:
        axes = None
        for attr in node.attribute:
            if attr.name == "axes":
                axes = list(attr.ints)
        if axes is None and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in constants:
                return None
            axes = [int(a) for a in constants[node.input[1]].reshape(-1)]
        dims = shape if not axes else [shape[a] for a in axes]
    if any(not isinstance(d, int) or d <= 0 for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1


def range_islands(model: onnx.ModelProto, batches: Sequence[np.ndarray], input_name: str, *,
                  limit: float = RANGE_LIMIT, exclude: Iterable[str] = ()) -> Group | None:
    """Nodes whose inputs or outputs exceed ``limit`` on ``batches`` (run in FP32), or use constants beyond FP16."""
    graph = model.graph
    exclude = set(exclude)
    users = consumers(graph)
    inferred = onnx.shape_inference.infer_shapes(without_weights(model))
    float_values = [v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == FLOAT]
    probe = model  # outputs are added for the probe and removed afterwards: no copy of the weights
    existing = {o.name for o in probe.graph.output}
    added = [name for name in float_values if name not in existing]
    for name in added:
        probe.graph.output.append(helper.make_tensor_value_info(name, FLOAT, None))
    try:
        runner = session(probe.SerializeToString(), fp16=False)
        names = [o.name for o in runner.get_outputs()]
        peak = collections.defaultdict(float)
        # One image at a time: every intermediate tensor of a full-size model is a gigabyte per image.
        for image in (batch[i : i + 1] for batch in batches for i in range(len(batch))):
            for name, value in zip(names, runner.run(names, {input_name: image})):
                if value.size and np.issubdtype(value.dtype, np.floating):
                    finite = value[np.isfinite(value)]
                    peak[name] = max(peak[name], float(np.abs(finite).max()) if finite.size else 0.0)
    finally:
        del probe.graph.output[len(existing):]
    hot = {name for name, value in peak.items() if value > limit}
    for init in graph.initializer:
        if init.data_type == FLOAT:
            array = numpy_helper.to_array(init)
            if array.size and np.abs(array).max() > FP16_MAX:
                hot.add(init.name)
    nodes = set()
    for node in graph.node:
        if node.name in exclude:
            continue
        if any(o in hot for o in node.output) or any(i in hot for i in node.input):
            nodes.add(node.name)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    array = numpy_helper.to_array(attr.t)
                    if array.size and np.abs(array).max() > FP16_MAX:
                        nodes.update(u.name for u in users.get(node.output[0], []))
    if not nodes:
        return None
    worst = max(peak.values(), default=0.0)
    return Group(
        "range", f"inputs or outputs beyond {limit:g} in magnitude on the calibration images (largest {worst:.3g}), "
        "or constants beyond FP16's range", [n.name for n in graph.node if n.name in nodes], forced=True,
    )

"""FP16 ONNX files for strongly typed TensorRT: FP16 tensors, FP32 islands chosen by measurement.

TensorRT 11 and TensorRT-RTX build *strongly typed* networks: there is no
FP16 builder flag, every tensor keeps the type the ONNX file gives it. So an
FP16 engine needs an ONNX file whose tensors are already FP16, with FP32
"islands" where FP16 loses too much, and FP32 inputs and outputs so callers
never see a half-precision tensor.

Which nodes stay FP32 is measured, not guessed:

1. *Forced islands*, for a reason that no measurement changes: ``specdet``
   plugin nodes (their fallback bodies and our TensorRT plugin take FP32),
   ONNX ``DFT`` nodes and the spectral arithmetic around them (TensorRT's
   cuFFT plugin has no FP16 at non-power-of-two lengths such as 224, and ONNX
   Runtime has no FP16 DFT kernel), and *range* islands: nodes whose inputs
   or outputs exceed :data:`RANGE_LIMIT` in magnitude on the calibration
   images (FP16 ends at 65,504) or use constants beyond FP16's range.
2. *Candidate islands*, the ops known to be sensitive in FP16: the spectral
   lowering (the ``matmul`` FFT's constant DFT products and the masking or
   magnitude arithmetic between and after them), ``LayerNormalization``,
   ``Softmax`` and large reductions (:data:`LARGE_REDUCTION` elements or more).
3. Starting from every candidate in FP32 (and everything else in FP16), each
   candidate group is released to FP16 in turn and kept in FP16 only when the
   file still agrees with the FP32 one on the calibration images within the
   tolerance (largest probability difference). Every trial's numbers are kept.

The conversion itself is onnxconverter-common's ``convert_float_to_float16``
(``keep_io_types=True``, a node block list), after a small preparation pass
that works around two of its limitations: it leaves ``Cast(to=FLOAT)`` nodes
producing FP32 while retyping their outputs as FP16, and it mistypes graph
outputs that other nodes also consume or that a blocked node produces.

Errors are measured in ONNX Runtime on the CPU. Its CPU provider has FP16
kernels for few ops and runs the others in FP32 between casts, so tensors are
rounded to FP16 between nodes as in TensorRT, but arithmetic inside a node is
FP32: the measurement bounds storage and range effects, not TensorRT's own
FP16 kernels. ONNX Runtime 1.32's layout optimizer (``ORT_ENABLE_ALL``)
crashes on FP16 graphs, so FP16 files run at ``ORT_ENABLE_EXTENDED``.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from specdet.errors import SpecdetError

CONVERTER = "onnxconverter-common"
# Largest probability difference (FP16 file vs FP32 file) a released group may leave.
DEFAULT_TOLERANCE = 0.005
# Magnitude above which a node's inputs or outputs make it a range island (FP16 max: 65,504).
RANGE_LIMIT = 4096.0
FP16_MAX = 65504.0
MIN_POSITIVE = 1e-7  # smaller nonzero constants are rounded up to this, as onnxconverter-common does
_DETACH_BYTES = 4096  # initializers larger than this skip the converter (see convert_to_fp16)
# Reductions over at least this many elements are candidates.
LARGE_REDUCTION = 1024

_FLOAT, _FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
_REDUCTIONS = {
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd", "GlobalAveragePool", "GlobalLpPool",
}
# Ops the spectral region may extend through after a transform: elementwise
# arithmetic and pure data movement (masking, magnitude, re/im bookkeeping).
_SPECTRAL_PASS = {
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Pow", "Reciprocal", "Atan", "Cos", "Sin", "Exp", "Log",
    "Max", "Min", "Where", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Concat", "Split", "Gather",
    "Identity", "Cast", "Flatten", "Expand", "Pad", "MatMul", "Gemm", "Einsum", "DFT",
}
_CONST_PASS = {"Transpose", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Neg"}


@dataclasses.dataclass
class Group:
    """A set of nodes that stays FP32 or goes FP16 together."""

    name: str
    reason: str
    nodes: list[str]
    forced: bool  # True: FP32 whatever the measurement says


@dataclasses.dataclass
class Agreement:
    """FP16 file vs FP32 file on the calibration images."""

    max_prob_diff: float
    max_logit_diff: float
    decision_agreement: float  # fraction of images with the same label at the threshold
    images: int
    finite: bool = True

    def within(self, tolerance: float) -> bool:
        return self.finite and self.max_prob_diff <= tolerance


@dataclasses.dataclass
class Trial:
    released: str  # the group released to FP16 in this trial ("" for the baseline)
    agreement: Agreement
    kept_fp16: bool


@dataclasses.dataclass
class PrecisionReport:
    converter: str
    tolerance: float
    range_limit: float
    calibration: str
    islands: list[Group]  # every group left in FP32
    released: list[str]  # candidate groups measured safe in FP16
    trials: list[Trial]
    agreement: Agreement  # the written file vs FP32, FP16 storage emulated (see storage_twin)
    agreement_onnxruntime: Agreement  # the written file as ONNX Runtime's CPU provider runs it
    fp32_nodes: int
    nodes: int
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def island_summary(self) -> list[dict]:
        """The manifest's ``fp32_islands``: name, reason and node names of each FP32 group."""
        return [{"name": g.name, "reason": g.reason, "forced": g.forced, "nodes": g.nodes} for g in self.islands]

    def lines(self) -> list[str]:
        a = self.agreement
        b = self.agreement_onnxruntime
        out = [
            f"  FP16 vs FP32 on {a.images} calibration images ({self.calibration}), FP16 storage emulated: largest "
            f"probability difference {a.max_prob_diff:.2e}, largest logit difference {a.max_logit_diff:.2e}, "
            f"decision agreement {100 * a.decision_agreement:.1f}%",
            f"  the file as ONNX Runtime (CPU) runs it: largest probability difference {b.max_prob_diff:.2e}, "
            f"decision agreement {100 * b.decision_agreement:.1f}%",
            f"  {self.fp32_nodes} of {self.nodes} nodes stay FP32:",
        ]
        out += [f"    {g.name} ({len(g.nodes)} nodes): {g.reason}" for g in self.islands] or ["    none"]
        if self.released:
            out.append(f"  measured safe in FP16: {', '.join(self.released)}")
        return out


# --- graph helpers ---


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the converter's block list is by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
    return users


def _constant_values(graph: onnx.GraphProto) -> set[str]:
    """Tensor names whose value is fixed: initializers, Constant outputs and nodes fed only by those."""
    constant = {init.name for init in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted in a valid model
        if node.op_type == "Constant" or (node.input and all(not i or i in constant for i in node.input)):
            constant.update(node.output)
    return constant


def _trace_constant(name: str, producers: dict, initializers: dict) -> np.ndarray | None:
    """The 2-D array behind ``name`` if it is an initializer seen through casts, transposes and reshapes."""
    for _ in range(8):
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
            return None
        if node.op_type not in _CONST_PASS:
            return None
        name = node.input[0]
    return None


def _is_dft_matrix(matrix: np.ndarray) -> bool:
    """Whether ``matrix`` (or its transpose) is a cosine or sine DFT matrix, up to per-column weights.

    The ``matmul`` lowering writes each 1-D transform as products with
    ``cos(2*pi*k*t/n)`` and ``sin(2*pi*k*t/n)`` matrices (scaled by the norm,
    and for the inverse real transform weighted per bin). Ordinary weight
    matrices never have a constant or all-zero first row or column, so that
    is checked first and the rest only for the few matrices that pass.
    """
    if matrix.ndim != 2 or min(matrix.shape) < 4 or not np.issubdtype(matrix.dtype, np.floating):
        return False
    m = matrix.astype(np.float64)
    if not (_first_row_flat(m) or _first_row_flat(m.T)):
        return False
    for candidate in (m, m.T):
        rows, cols = candidate.shape
        for n in {rows, cols, 2 * (rows - 1), 2 * rows - 1, 2 * (cols - 1), 2 * cols - 1}:
            phase = (np.arange(rows)[:, None] * np.arange(cols)[None, :]) % n
            for basis in (np.cos(2 * np.pi * phase / n), np.sin(2 * np.pi * phase / n)):
                norms = (basis * basis).sum(0)
                weights = np.where(norms > 1e-9, (candidate * basis).sum(0) / np.maximum(norms, 1e-9), 0.0)
                residual = np.abs(candidate - basis * weights).max()
                if np.count_nonzero(weights) >= cols // 2 and residual <= 1e-4 * np.abs(candidate).max():
                    return True
    return False


def _first_row_flat(m: np.ndarray) -> bool:
    row = m[0]
    scale = np.abs(m).max()
    return scale > 0 and np.abs(row - row[0]).max() <= 1e-6 * scale


def _reduced_elements(node: onnx.NodeProto, shapes: dict[str, list], constants: dict[str, np.ndarray]) -> int | None:
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


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(_without_weights(model))
    out = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            out[info.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    return out


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape inference: large initializers become typed graph inputs (no data copied)."""
    light = onnx.ModelProto()
    if model.ByteSize() < (64 << 20):
        light.CopyFrom(model)
    else:
        _copy_light(model, light)
    return light


def _copy_light(model: onnx.ModelProto, light: onnx.ModelProto) -> None:
    graph = model.graph
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    for init in graph.initializer:
        if len(init.raw_data) > 4096:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            g.initializer.append(init)


# --- finding the groups ---


def spectral_region(model: onnx.ModelProto) -> tuple[list[str], bool]:
    """Nodes of the FFT lowering, and whether they include ONNX DFT nodes.

    Seeds are the ``DFT`` nodes and the products with a constant DFT matrix
    (the ``matmul`` lowering). The region grows forward from the seeds through
    elementwise arithmetic and data movement (masks, magnitudes, the second
    axis's transform, the inverse transform) and stops after a reduction or
    at any other op; it also takes in the constant chains (casts, transposes)
    that feed the DFT matrices, so those keep full precision.
    """
    graph = model.graph
    producers, users = _producers(graph), _consumers(graph)
    initializers = {init.name: init for init in graph.initializer}
    seeds: set[str] = set()
    has_dft = False
    checked: dict[str, bool] = {}
    for node in graph.node:
        if node.op_type == "DFT":
            seeds.add(node.name)
            has_dft = True
        elif node.op_type in ("MatMul", "Gemm", "Einsum"):
            for name in node.input:
                if name not in checked:
                    array = _trace_constant(name, producers, initializers)
                    checked[name] = array is not None and _is_dft_matrix(array)
                if checked[name]:
                    seeds.add(node.name)
                    break
    if not seeds:
        return [], False
    by_name = {node.name: node for node in graph.node}
    region = set(seeds)
    frontier = list(seeds)
    while frontier:
        node = by_name[frontier.pop()]
        if node.op_type in _REDUCTIONS:
            continue
        for out in node.output:
            for user in users.get(out, []):
                if user.name in region:
                    continue
                if user.op_type in _REDUCTIONS or user.op_type in _SPECTRAL_PASS and (
                    user.op_type not in ("MatMul", "Gemm", "Einsum") or user.name in seeds
                ):
                    region.add(user.name)
                    frontier.append(user.name)
    region |= _constant_ancestors(graph, region)
    return [n.name for n in graph.node if n.name in region], has_dft


def _constant_ancestors(graph: onnx.GraphProto, nodes: set[str]) -> set[str]:
    """Nodes computing constants (casts, transposes of initializers) used only by ``nodes``."""
    constant = _constant_values(graph)
    users = _consumers(graph)
    added: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in reversed(graph.node):
            if node.name in nodes or node.name in added or not node.output or node.output[0] not in constant:
                continue
            outs = [u for out in node.output for u in users.get(out, [])]
            if outs and all(u.name in nodes or u.name in added for u in outs):
                added.add(node.name)
                changed = True
    return added


def output_head(graph: onnx.GraphProto, depth: int = 6) -> list[str]:
    """The last layer: nodes computing the graph outputs, back to and including the first MatMul/Gemm.

    In FP16 a probability near 1 moves in steps of 5e-4; the outputs are FP32
    anyway, and the classifier layer and its sigmoid cost nothing in FP32.
    """
    producers = _producers(graph)
    constant = _constant_values(graph)
    head: set[str] = set()
    frontier = [(producers[o.name], 0) for o in graph.output if o.name in producers]
    while frontier:
        node, level = frontier.pop()
        if node.name in head or level > depth:
            continue
        head.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            continue
        if node.op_type in _SPECTRAL_PASS or node.op_type in _REDUCTIONS or node.op_type in ("Sigmoid", "Softmax"):
            frontier += [(producers[i], level + 1) for i in node.input if i in producers and i not in constant]
    return [n.name for n in graph.node if n.name in head]


def find_groups(model: onnx.ModelProto) -> list[Group]:
    """Forced and candidate FP32 groups of ``model`` (range islands come from measurement, later)."""
    _name_nodes(model)
    graph = model.graph
    groups: list[Group] = []
    head = output_head(graph)
    groups.append(Group(
        "output head", "the classifier layer and the sigmoid: FP16 would quantise probabilities in steps of up "
        "to 5e-4, at no speed gain", head, forced=True,
    ))
    taken: set[str] = set(head)

    plugin = [n.name for n in graph.node if n.domain == "specdet"]
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

    shapes = _shapes(model)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer if len(init.raw_data) <= 4096}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    for name, ops, reason in (
        ("LayerNormalization", {"LayerNormalization"}, "mean and variance over the hidden size"),
        ("Softmax", {"Softmax", "LogSoftmax"}, "exponentials and their sums"),
    ):
        nodes = [n.name for n in graph.node if n.op_type in ops and n.name not in taken]
        if nodes:
            groups.append(Group(name, reason, nodes, forced=False))
            taken.update(nodes)
    large = []
    for node in graph.node:
        if node.op_type in _REDUCTIONS and node.name not in taken:
            count = _reduced_elements(node, shapes, constants)
            if count is None or count >= LARGE_REDUCTION:
                large.append(node.name)
    if large:
        groups.append(Group(
            "large reductions", f"sums or means over {LARGE_REDUCTION} or more elements", large, forced=False,
        ))
    return groups


def range_islands(model: onnx.ModelProto, batches: Sequence[np.ndarray], input_name: str, *,
                  limit: float = RANGE_LIMIT, exclude: Iterable[str] = ()) -> Group | None:
    """Nodes whose inputs or outputs exceed ``limit`` on ``batches`` (run in FP32), or use constants beyond FP16."""
    graph = model.graph
    exclude = set(exclude)
    users = _consumers(graph)
    shapes_model = onnx.shape_inference.infer_shapes(_without_weights(model))
    float_values = [
        v.name for v in shapes_model.graph.value_info if v.type.tensor_type.elem_type == _FLOAT
    ]
    probe = model  # outputs are added for the probe and removed afterwards: no copy of the weights
    existing = {o.name for o in probe.graph.output}
    added = [name for name in float_values if name not in existing]
    for name in added:
        probe.graph.output.append(helper.make_tensor_value_info(name, _FLOAT, None))
    try:
        session = _session(probe.SerializeToString(), fp16=False)
        names = [o.name for o in session.get_outputs()]
        peak = collections.defaultdict(float)
        # One image at a time: every intermediate tensor of a full-size model is a gigabyte per image.
        for image in (batch[i : i + 1] for batch in batches for i in range(len(batch))):
            for name, value in zip(names, session.run(names, {input_name: image})):
                if value.size and np.issubdtype(value.dtype, np.floating):
                    finite = value[np.isfinite(value)]
                    peak[name] = max(peak[name], float(np.abs(finite).max()) if finite.size else 0.0)
    finally:
        del probe.graph.output[len(existing):]
    hot = {name for name, value in peak.items() if value > limit}
    initializers = {init.name: init for init in graph.initializer}
    for init in graph.initializer:
        if init.data_type == _FLOAT:
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
                if attr.name == "value" and attr.t.data_type == _FLOAT:
                    array = numpy_helper.to_array(attr.t)
                    if array.size and np.abs(array).max() > FP16_MAX:
                        nodes.update(u.name for u in users.get(node.output[0], []))
    del initializers
    if not nodes:
        return None
    worst = max(peak.values(), default=0.0)
    return Group(
        "range", f"inputs or outputs beyond {limit:g} in magnitude on the calibration images (largest {worst:.3g}), "
        "or constants beyond FP16's range", [n.name for n in graph.node if n.name in nodes], forced=True,
    )


# --- conversion ---


def convert_to_fp16(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> onnx.ModelProto:
    """``model`` (FP32) with FP16 tensors except in ``fp32_nodes``; inputs and outputs stay FP32.

    ``model`` is not modified.
    """
    from onnxconverter_common import float16

    _name_nodes(model)
    # The converter works on a copy without the weights' data (a full-size
    # model is a gigabyte; the converter and its shape inference would copy
    # it several times); the weights are converted afterwards, tensor by
    # tensor, with the converter's own rounding function.
    light, weights = _detach_weights(model)
    blocked = set(fp32_nodes)
    blocked |= _constant_ancestors(light.graph, blocked)
    _prepare(light, blocked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per clamped tiny constant
        converted = float16.convert_float_to_float16(
            light, keep_io_types=True, op_block_list=[], node_block_list=sorted(blocked),
            min_positive_val=MIN_POSITIVE, max_finite_val=FP16_MAX,
            check_fp16_ready=False,  # _prepare's FP16 casts trip it; the source's type is checked in to_fp16
        )
        _attach_weights(converted, weights, float16.convert_np_to_float16)
    _repair(converted)
    _check_io(converted)
    return converted


def _detach_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of ``model`` whose large initializers have no data, and those initializers by name."""
    light = onnx.ModelProto()
    graph = model.graph
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.metadata_props.extend(model.metadata_props)
    g = light.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    weights = {}
    for init in graph.initializer:
        if len(init.raw_data) > _DETACH_BYTES:
            stub = g.initializer.add()
            stub.name, stub.data_type = init.name, init.data_type
            stub.dims.extend(init.dims)
            weights[init.name] = init
        else:
            g.initializer.append(init)
    return light, weights


def _attach_weights(model: onnx.ModelProto, weights: dict[str, onnx.TensorProto], to_fp16: Callable) -> None:
    """Fill the stubs of :func:`_detach_weights`: FP16 where the converter retyped them, else as they were."""
    for stub in model.graph.initializer:
        if stub.raw_data or stub.float_data:
            continue
        source = weights.get(stub.name) or weights.get(stub.name.removesuffix("__fp32"))
        if source is None:
            continue
        if stub.data_type == _FLOAT16 and source.data_type == _FLOAT:
            array = np.frombuffer(source.raw_data, dtype=np.float32)
            stub.raw_data = to_fp16(array, MIN_POSITIVE, FP16_MAX).astype(np.float16).tobytes()
        else:
            stub.raw_data = source.raw_data


def _repair(model: onnx.ModelProto) -> None:
    """Undo two things onnxconverter-common does to FP32 regions.

    1. It gives a blocked node that produces a graph output an FP16 cast and
       retypes the output FP16: the output Identity of :func:`_prepare` feeds
       the output directly again, as FP32.
    2. It casts every blocked node's outputs to FP16 and back to FP32 for its
       blocked consumers, and removes such round trips only where there is
       one consumer: FP32 -> FP16 -> FP32 chains lose precision inside an
       FP32 island, so each one is bypassed.
    """
    graph = model.graph
    producers = _producers(graph)
    outputs = {o.name: o for o in graph.output}
    removed: set[str] = set()
    for name, value in outputs.items():
        cast = producers.get(name)
        if cast is None or cast.op_type != "Cast" or _cast_to(cast) != _FLOAT16:
            continue
        inner = producers.get(cast.input[0])
        if inner is not None and inner.op_type == "Identity" and inner.name == f"{name}__output":
            removed.add(inner.output[0])
            inner.output[0] = name
            graph.node.remove(cast)
            value.type.tensor_type.elem_type = _FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    users = _consumers(graph)
    replace: dict[str, str] = {}
    dead: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "Cast" or _cast_to(node) != _FLOAT16 or types.get(node.input[0]) != _FLOAT:
            continue
        readers = users.get(node.output[0], [])
        if node.output[0] in outputs or not readers or any(
            r.op_type != "Cast" or _cast_to(r) != _FLOAT or r.output[0] in outputs for r in readers
        ):
            continue
        for reader in readers:
            replace[reader.output[0]] = node.input[0]
        dead += [node, *readers]
    for node in dead:
        graph.node.remove(node)
        removed.update(node.output)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    stale = [v for v in graph.value_info if v.name in removed]
    for v in stale:
        graph.value_info.remove(v)


def _cast_to(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "to":
            return attr.i
    return None


def _prepare(model: onnx.ModelProto, blocked: set[str]) -> None:
    """Make ``model`` safe for onnxconverter-common (see the module docstring)."""
    graph = model.graph
    # 0. Initializers need no value_info; the converter would retype them FP16
    #    and then convert the weights of FP32 nodes too.
    names = {init.name for init in graph.initializer}
    for value in [v for v in graph.value_info if v.name in names]:
        graph.value_info.remove(value)
    # 1. Every graph output gets its own Identity: the converter then casts
    #    that node's output, whoever else reads the value.
    outputs = {o.name for o in graph.output}
    renamed = {}
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out in outputs:
                renamed[out] = f"{out}__value"
                node.output[i] = renamed[out]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for out, inner in renamed.items():
        graph.node.append(helper.make_node("Identity", [inner], [out], name=f"{out}__output"))
        blocked.add(f"{out}__output")  # an FP32 pass-through: the output keeps FP32 precision
    # 2. Cast to FLOAT outside the islands means "to the compute type": FP16.
    for node in graph.node:
        if node.op_type == "Cast" and node.name not in blocked:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == _FLOAT:
                    attr.i = _FLOAT16
    # 3. Initializers read by FP32 and FP16 nodes alike: the FP32 ones get their own copy.
    users = _consumers(graph)
    for init in list(graph.initializer):
        if init.data_type != _FLOAT:
            continue
        readers = users.get(init.name, [])
        fp32 = [n for n in readers if n.name in blocked]
        if fp32 and len(fp32) < len(readers):
            twin = onnx.TensorProto()
            twin.CopyFrom(init)
            twin.name = f"{init.name}__fp32"
            graph.initializer.append(twin)
            for node in fp32:
                for i, name in enumerate(node.input):
                    if name == init.name:
                        node.input[i] = twin.name


def _check_io(model: onnx.ModelProto) -> None:
    for value in (*model.graph.input, *model.graph.output):
        if value.type.tensor_type.elem_type != _FLOAT:
            raise SpecdetError(f"FP16 conversion changed the type of {value.name!r}: inputs and outputs must stay FP32")


# --- measurement ---


def _session(model_bytes: bytes, *, fp16: bool, unoptimised: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ORT 1.32's layout (NCHWc) optimizer crashes on FP16 graphs: stop one level below it.
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if unoptimised else session_options_for("fp16" if fp16 else "fp32")
    )
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def session_options_for(precision: str) -> ort.GraphOptimizationLevel:
    """The optimisation level ONNX Runtime can run a file of ``precision`` at."""
    return ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if precision == "fp16" else ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def storage_twin(model: onnx.ModelProto) -> bytes:
    """``model`` with every FP16 tensor rounded to FP16 when ONNX Runtime's CPU provider runs it.

    ONNX Runtime runs an FP16 node without a CPU FP16 kernel (MatMul, Conv,
    Exp, ...) in FP32 between casts, and then drops the FP32 -> FP16 -> FP32
    cast pairs between such nodes: activations are never rounded and never
    overflow. Two ``Identity`` nodes (which have FP16 kernels) after each
    FP16 output force the rounding (ONNX Runtime moves a lone FP16 node
    between FP32 ones to FP32); the twin runs unoptimised so that they stay. Arithmetic inside a node remains FP32, so this measures
    FP16 storage and range, the way TensorRT stores tensors between layers.
    """
    twin = model  # changed in place and restored below: no copy of the weights
    fp16 = {v.name for v in twin.graph.value_info if v.type.tensor_type.elem_type == _FLOAT16}
    added = []
    for node in twin.graph.node:
        if node.op_type in ("Identity", "Constant", "Shape"):
            continue
        for i, out in enumerate(node.output):
            if out in fp16:
                node.output[i] = f"{out}__fp16"
                # Two in a row: ORT runs an *isolated* FP16 node in FP32 and drops its casts.
                added.append(helper.make_node("Identity", [node.output[i]], [f"{out}__fp16b"], name=f"{out}__round"))
                added.append(helper.make_node("Identity", [f"{out}__fp16b"], [out], name=f"{out}__roundb"))
    twin.graph.node.extend(added)
    data = twin.SerializeToString()
    del model.graph.node[len(model.graph.node) - len(added):]
    for node in model.graph.node:
        for i, out in enumerate(node.output):
            if out.endswith("__fp16"):
                node.output[i] = out[: -len("__fp16")]
    return data


def run_model(model_bytes: bytes, batches: Sequence[np.ndarray], input_name: str, *, fp16: bool,
              unoptimised: bool = False) -> dict[str, np.ndarray]:
    session = _session(model_bytes, fp16=fp16, unoptimised=unoptimised)
    names = [o.name for o in session.get_outputs()]
    results = [session.run(names, {input_name: batch}) for batch in batches]
    return {name: np.concatenate([r[i] for r in results]).astype(np.float64) for i, name in enumerate(names)}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], threshold: float) -> Agreement:
    p_ref, p_new = reference["probability"], candidate["probability"]
    l_ref, l_new = reference["logit"], candidate["logit"]
    finite = bool(np.all(np.isfinite(p_new)) and np.all(np.isfinite(l_new)))
    return Agreement(
        max_prob_diff=float(np.abs(p_new - p_ref).max(initial=0.0)) if finite else float("inf"),
        max_logit_diff=float(np.abs(l_new - l_ref).max(initial=0.0)) if finite else float("inf"),
        decision_agreement=float(np.mean((p_new >= threshold) == (p_ref >= threshold))) if len(p_ref) else 1.0,
        images=int(len(p_ref)),
        finite=finite,
    )


def to_fp16(
    model: onnx.ModelProto,
    batches: Sequence[np.ndarray],
    *,
    input_name: str,
    threshold: float,
    calibration: str,
    tolerance: float = DEFAULT_TOLERANCE,
    range_limit: float = RANGE_LIMIT,
    progress: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, PrecisionReport]:
    """Convert the FP32 ``model`` to mixed precision, choosing its FP32 islands by measurement on ``batches``.

    ``batches`` are preprocessed calibration images (each within the model's
    batch range). Raises :class:`SpecdetError` if even the most conservative
    conversion (every candidate in FP32) misses ``tolerance``.
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    if any(t.data_type == _FLOAT16 for t in model.graph.initializer) or any(
        v.type.tensor_type.elem_type == _FLOAT16 for v in (*model.graph.input, *model.graph.output)
    ):
        raise SpecdetError("the model already has FP16 tensors: convert its FP32 export instead")
    _name_nodes(model)  # the only change to ``model``: unnamed nodes get names
    say("finding sensitive ops")
    groups = find_groups(model)
    say("measuring value ranges")
    taken = {n for g in groups for n in g.nodes}
    ranged = range_islands(model, batches, input_name, limit=range_limit, exclude=taken)
    if ranged is not None:
        groups.insert(0, ranged)
    reference = run_model(model.SerializeToString(), batches, input_name, fp16=False)
    fp32 = list(groups)

    def attempt(fp32_groups: list[Group]) -> tuple[onnx.ModelProto, Agreement]:
        converted = convert_to_fp16(model, [n for g in fp32_groups for n in g.nodes])
        outputs = run_model(storage_twin(converted), batches, input_name, fp16=True, unoptimised=True)
        return converted, compare(reference, outputs, threshold)

    say("baseline: every candidate in FP32")
    best, agreement = attempt(fp32)
    trials = [Trial("", agreement, kept_fp16=False)]
    if not agreement.within(tolerance):
        raise SpecdetError(
            f"FP16 misses the tolerance even with every sensitive op in FP32: largest probability difference "
            f"{agreement.max_prob_diff:.3g} > {tolerance:g} on the calibration images; export in FP32, or raise "
            "--fp16-tolerance"
        )
    released = []
    for group in [g for g in groups if not g.forced]:
        say(f"trying {group.name} in FP16")
        trial_groups = [g for g in fp32 if g is not group]
        candidate, result = attempt(trial_groups)
        ok = result.within(tolerance)
        trials.append(Trial(group.name, result, kept_fp16=ok))
        if ok:
            fp32, best, agreement = trial_groups, candidate, result
            released.append(group.name)
    say("running the chosen file as ONNX Runtime does")
    as_is = compare(reference, run_model(best.SerializeToString(), batches, input_name, fp16=True), threshold)
    nodes = len(model.graph.node)
    report = PrecisionReport(
        converter=f"{CONVERTER} {_version('onnxconverter-common')}",
        tolerance=tolerance,
        range_limit=range_limit,
        calibration=calibration,
        islands=fp32,
        released=released,
        trials=trials,
        agreement=agreement,
        agreement_onnxruntime=as_is,
        fp32_nodes=sum(len(g.nodes) for g in fp32),
        nodes=nodes,
        seconds=time.perf_counter() - start,
    )
    return best, report


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def require_converter() -> None:
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError as err:
        raise SpecdetError("--precision fp16 needs onnxconverter-common: pip install 'specdet[fp16]'") from err

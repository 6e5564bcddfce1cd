"""The FFT lowering inside an exported graph: ONNX ``DFT`` nodes, products with constant DFT matrices, and the
spectral arithmetic between and after them."""

from __future__ import annotations

import numpy as np
import onnx

from specdet.export.precision.graph import constant_ancestors, consumers, producers, trace_constant

REDUCTIONS = {
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd", "GlobalAveragePool", "GlobalLpPool",
}
# Ops the spectral region may extend through after a transform: elementwise
# arithmetic and pure data movement (masking, magnitude, re/im bookkeeping).
SPECTRAL_PASS = {
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Pow", "Reciprocal", "Atan", "Cos", "Sin", "Exp", "Log",
    "Max", "Min", "Where", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Concat", "Split", "Gather",
    "Identity", "Cast", "Flatten", "Expand", "Pad", "MatMul", "Gemm", "Einsum", "DFT",
}
_PRODUCTS = ("MatMul", "Gemm", "Einsum")


def is_dft_matrix(matrix: np.ndarray) -> bool:
    """Whether ``matrix`` (or its transpose) is a cosine or sine DFT matrix, up to per-column weights.

    The ``matmul`` lowering writes each 1-D transform as products with
    ``cos(2*pi*k*t/n)`` and ``sin(2*pi*k*t/n)`` matrices (scaled by the norm,
    and for the inverse real transform weighted per bin), stored in the
    graph's float type. Ordinary weight matrices never have a constant or
    all-zero first row or column, so that is checked first and the rest only
    for the few matrices that pass.
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
    made_by, users = producers(graph), consumers(graph)
    initializers = {init.name: init for init in graph.initializer}
    seeds: set[str] = set()
    has_dft = False
    checked: dict[str, bool] = {}
    for node in graph.node:
        if node.op_type == "DFT":
            seeds.add(node.name)
            has_dft = True
        elif node.op_type in _PRODUCTS:
            for name in node.input:
                if name not in checked:
                    array = trace_constant(name, made_by, initializers)
                    checked[name] = array is not None and is_dft_matrix(array)
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
        if node.op_type in REDUCTIONS:
            continue
        for out in node.output:
            for user in users.get(out, []):
                if user.name in region:
                    continue
                if user.op_type in REDUCTIONS or user.op_type in SPECTRAL_PASS and (
                    user.op_type not in _PRODUCTS or user.name in seeds
                ):
                    region.add(user.name)
                    frontier.append(user.name)
    region |= constant_ancestors(graph, region)
    return [n.name for n in graph.node if n.name in region], has_dft

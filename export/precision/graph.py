"""ONNX graph helpers of the FP16 and INT8 conversions: types, node names, producers and consumers, constants, shapes."""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import helper, numpy_helper

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
FP16_MAX = 65504.0
# Initializers with more data than this are weights: light copies of a model
# (shape inference, the converter) leave their data out instead of copying it.
DETACH_BYTES = 4096
# Ops a constant is traced back through to the initializer it comes from.
_CONST_PASS = {"Transpose", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Neg"}


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the converter's block list is by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
    return users


def cast_to(node: onnx.NodeProto) -> int | None:
    """The ``to`` type of a ``Cast`` node."""
    for attr in node.attribute:
        if attr.name == "to":
            return attr.i
    return None


def constant_values(graph: onnx.GraphProto) -> set[str]:
    """Tensor names whose value is fixed: initializers, Constant outputs and nodes fed only by those."""
    constant = {init.name for init in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted in a valid model
        if node.op_type == "Constant" or (node.input and all(not i or i in constant for i in node.input)):
            constant.update(node.output)
    return constant


def constant_ancestors(graph: onnx.GraphProto, nodes: set[str]) -> set[str]:
    """Nodes computing constants (casts, transposes of initializers) used only by ``nodes``."""
    constant = constant_values(graph)
    users = consumers(graph)
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


def trace_constant(name: str, producers: dict, initializers: dict) -> np.ndarray | None:
    """The array behind ``name`` if it is an initializer or Constant seen through casts, transposes and reshapes."""
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


def small_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The values of small initializers and of Constant nodes, by tensor name (axes, shapes, scalars)."""
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer
                 if len(init.raw_data) <= DETACH_BYTES}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    return constants


def shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Inferred shape of every tensor that has one: ints, or dim names for symbolic axes."""
    inferred = onnx.shape_inference.infer_shapes(without_weights(model))
    out = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            out[info.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    return out


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape inference: large initializers become typed graph inputs (no data copied)."""
    light = onnx.ModelProto()
    if model.ByteSize() < (64 << 20):
        light.CopyFrom(model)
        return light
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
        if len(init.raw_data) > DETACH_BYTES:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            g.initializer.append(init)
    return light

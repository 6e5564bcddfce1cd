"""One FP16 conversion with a given set of FP32 nodes: onnxconverter-common, with the weights detached and two of
its bugs repaired.

The converter is ``convert_float_to_float16`` (``keep_io_types=True``, a node
block list), after a small preparation pass that works around two of its
limitations: it leaves ``Cast(to=FLOAT)`` nodes producing FP32 while retyping
their outputs as FP16, and it mistypes graph outputs that other nodes also
consume or that a blocked node produces.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import helper

from specdet.errors import SpecdetError
from specdet.export.precision.graph import (
    DETACH_BYTES,
    FLOAT,
    FLOAT16,
    FP16_MAX,
    cast_to,
    constant_ancestors,
    consumers,
    name_nodes,
    producers,
)

MIN_POSITIVE = 1e-7  # smaller nonzero constants are rounded up to this, as onnxconverter-common does


def convert_to_fp16(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> onnx.ModelProto:
    """``model`` (FP32) with FP16 tensors except in ``fp32_nodes``; inputs and outputs stay FP32.

    ``model`` is not modified.
    """
    from onnxconverter_common import float16

    name_nodes(model)
    # The converter works on a copy without the weights' data (a full-size
    # model is a gigabyte; the converter and its shape inference would copy
    # it several times); the weights are converted afterwards, tensor by
    # tensor, with the converter's own rounding function.
    light, weights = _detach_weights(model)
    blocked = set(fp32_nodes)
    blocked |= constant_ancestors(light.graph, blocked)
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
        if len(init.raw_data) > DETACH_BYTES:
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
        if stub.data_type == FLOAT16 and source.data_type == FLOAT:
            array = np.frombuffer(source.raw_data, dtype=np.float32)
            stub.raw_data = to_fp16(array, MIN_POSITIVE, FP16_MAX).astype(np.float16).tobytes()
        else:
            stub.raw_data = source.raw_data


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
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = FLOAT16
    # 3. Initializers read by FP32 and FP16 nodes alike: the FP32 ones get their own copy.
    users = consumers(graph)
    for init in list(graph.initializer):
        if init.data_type != FLOAT:
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
    made_by = producers(graph)
    outputs = {o.name: o for o in graph.output}
    removed: set[str] = set()
    for name, value in outputs.items():
        cast = made_by.get(name)
        if cast is None or cast.op_type != "Cast" or cast_to(cast) != FLOAT16:
            continue
        inner = made_by.get(cast.input[0])
        if inner is not None and inner.op_type == "Identity" and inner.name == f"{name}__output":
            removed.add(inner.output[0])
            inner.output[0] = name
            graph.node.remove(cast)
            value.type.tensor_type.elem_type = FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    users = consumers(graph)
    replace: dict[str, str] = {}
    dead: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "Cast" or cast_to(node) != FLOAT16 or types.get(node.input[0]) != FLOAT:
            continue
        readers = users.get(node.output[0], [])
        if node.output[0] in outputs or not readers or any(
            r.op_type != "Cast" or cast_to(r) != FLOAT or r.output[0] in outputs for r in readers
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


def _check_io(model: onnx.ModelProto) -> None:
    for value in (*model.graph.input, *model.graph.output):
        if value.type.tensor_type.elem_type != FLOAT:
            raise SpecdetError(f"FP16 conversion changed the type of {value.name!r}: inputs and outputs must stay FP32")

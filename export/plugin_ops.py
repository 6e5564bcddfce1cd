"""The ``plugin`` FFT mode: our spectral ops as nodes of the ``specdet`` ONNX domain.

Each op of :mod:`specdet.models.spectral` is exported as one node (for
example ``specdet.BandSplit``) that our TensorRT plugin implements. So that
runtimes without the plugin still run the very same file, the model also
carries an ONNX local function of that name whose body is the ``matmul``
lowering of the op at the node's input shape: ONNX Runtime, and TensorRT when
the plugin library is not loaded, inline it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxscript
import torch
from onnx import helper, numpy_helper

from specdet.errors import SpecdetError
from specdet.export.lowering import ComplexLowering
from specdet.export.quiet import quiet_exporter
from specdet.models import spectral
from specdet.tensorrt import PLUGIN_DOMAIN

DOMAIN_VERSION = 1
_opset = onnxscript.values.Opset(PLUGIN_DOMAIN, DOMAIN_VERSION)


@dataclasses.dataclass(frozen=True)
class SpectralOp:
    """One spectral op: its ONNX node name and how to build its reference body."""

    onnx_name: str
    torch_op: object  # the torch.library op overload the model calls in plugin mode
    translate: Callable  # onnxscript translation: torch op call -> specdet node
    reference: Callable[[tuple[int, ...], dict], torch.nn.Module]  # (input shape, node attributes) -> torch.fft module


def _schema(name: str, doc: str, attributes: list[tuple[str, int]]) -> onnx.defs.OpSchema:
    """The op's ONNX signature: one float tensor in, one out, typed attributes."""
    tensor = onnx.defs.OpSchema.FormalParameter
    return onnx.defs.OpSchema(
        name, PLUGIN_DOMAIN, DOMAIN_VERSION, doc=doc,
        inputs=[tensor("x", "T")], outputs=[tensor("y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[onnx.defs.OpSchema.Attribute(n, t, required=True) for n, t in attributes],
    )


_A = onnx.defs.OpSchema.AttrType
BAND_SPLIT = onnxscript.values.Op(_opset, "BandSplit", _schema(
    "BandSplit", "[B, C, H, W] to radial frequency bands [B, K, C, H, W]; K = len(edges) + 1.",
    [("edges", _A.FLOATS), ("centre", _A.STRING)],
))
SPECTRUM_MAGNITUDE_MEAN = onnxscript.values.Op(_opset, "SpectrumMagnitudeMean", _schema(
    "SpectrumMagnitudeMean", "[B, C, H, W] to [B, C]: mean |rfft2(x, norm='ortho')| per channel.", [],
))


def _band_split_translation(x, edges: list[float], centre: str):
    return BAND_SPLIT(x, edges=edges, centre=centre)


def _spectrum_magnitude_mean_translation(x):
    return SPECTRUM_MAGNITUDE_MEAN(x)


class _BandSplit(torch.nn.Module):
    def __init__(self, shape: tuple[int, ...], attrs: dict):
        super().__init__()
        self.register_buffer("masks", spectral.radial_band_masks(shape[-2], shape[-1], attrs["edges"], attrs["centre"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral.band_split_reference(x, self.masks)


class _SpectrumMagnitudeMean(torch.nn.Module):
    def __init__(self, shape: tuple[int, ...], attrs: dict):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral.spectrum_magnitude_mean_reference(x)


PLUGIN_OPS = (
    SpectralOp("BandSplit", torch.ops.specdet.band_split.default, _band_split_translation, _BandSplit),
    SpectralOp(
        "SpectrumMagnitudeMean",
        torch.ops.specdet.spectrum_magnitude_mean.default,
        _spectrum_magnitude_mean_translation,
        _SpectrumMagnitudeMean,
    ),
)


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``."""
    return {op.torch_op: op.translate for op in PLUGIN_OPS}


class _MatmulLowered(torch.nn.Module):
    def __init__(self, reference: torch.nn.Module):
        super().__init__()
        self.reference = reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with ComplexLowering("matmul"):
            return self.reference(x)


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


def _input_shape(model: onnx.ModelProto, name: str) -> list[int]:
    for info in (*model.graph.input, *model.graph.value_info):
        if info.name == name:
            dims = info.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    raise SpecdetError(f"cannot find the shape of {name!r}, the input of a specdet plugin node")


def _function_body(op: SpectralOp, node: onnx.NodeProto, shape: list[int], opset: int) -> onnx.FunctionProto:
    """Export the op's matmul lowering at ``shape`` and wrap the graph as a local function."""
    if any(d <= 0 for d in shape[1:]):
        raise SpecdetError(f"specdet.{op.onnx_name} needs static channel and spatial sizes, got {shape}")
    attrs = {k: _decode(v) for k, v in _attributes(node).items()}
    if "edges" in attrs:
        attrs["edges"] = list(attrs["edges"])
    example = torch.zeros([2, *shape[1:]])
    with tempfile.TemporaryDirectory() as tmp, quiet_exporter():
        path = Path(tmp) / "body.onnx"
        torch.onnx.export(
            _MatmulLowered(op.reference(tuple(shape), attrs)), (example,), str(path), dynamo=True, opset_version=opset,
            input_names=["x"], output_names=["y"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            external_data=False, verbose=False,
        )
        graph = onnx.load(str(path)).graph
    constants = [
        helper.make_node("Constant", [], [init.name], value=numpy_helper.from_array(numpy_helper.to_array(init), init.name))
        for init in graph.initializer
    ]
    return helper.make_function(
        PLUGIN_DOMAIN, op.onnx_name, inputs=["x"], outputs=["y"], nodes=[*constants, *graph.node],
        opset_imports=[helper.make_opsetid("", opset)], attributes=list(attrs),
    )


def attach_function_bodies(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Give every ``specdet`` op used in ``model`` its matmul-lowering local function.

    One function per op type: a model that used one op at two different
    input shapes would need two bodies, which ONNX can only express through
    function overloads; none of our models does, so that case is refused.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    by_name = {op.onnx_name: op for op in PLUGIN_OPS}
    seen: dict[str, tuple] = {}
    for node in model.graph.node:
        if node.domain != PLUGIN_DOMAIN:
            continue
        if node.op_type not in by_name:
            raise SpecdetError(f"unknown specdet op {node.op_type!r} in the exported graph")
        shape = _input_shape(inferred, node.input[0])
        key = (tuple(shape[1:]), str(sorted(_attributes(node).items())))
        if node.op_type in seen:
            if seen[node.op_type] != key:
                raise SpecdetError(f"specdet.{node.op_type} is used with two different shapes or attributes")
            continue
        seen[node.op_type] = key
        model.functions.append(_function_body(by_name[node.op_type], node, shape, opset))
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, DOMAIN_VERSION))
    return model

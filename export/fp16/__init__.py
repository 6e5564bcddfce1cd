"""FP16 ONNX files for strongly typed TensorRT: FP16 tensors, FP32 islands chosen by measurement.

TensorRT 11 and TensorRT-RTX build *strongly typed* networks: there is no
FP16 builder flag, every tensor keeps the type the ONNX file gives it. So an
FP16 engine needs an ONNX file whose tensors are already FP16, with FP32
"islands" where FP16 loses too much, and FP32 inputs and outputs so callers
never see a half-precision tensor.

One module per stage:

- :mod:`.graph`: ONNX graph helpers (producers, consumers, constants, shapes);
- :mod:`.spectral`: the FFT lowering inside a graph (DFT nodes, constant DFT matrices);
- :mod:`.islands`: forced and candidate FP32 groups, and range islands measured on calibration images;
- :mod:`.convert`: one conversion with a given set of FP32 nodes (onnxconverter-common, repaired);
- :mod:`.measure`: running files in ONNX Runtime with FP16 storage emulated, and comparing outputs;
- :mod:`.search`: :func:`to_fp16`, releasing candidate groups to FP16 one at a time, and its report.
"""

from specdet.export.fp16.search import DEFAULT_TOLERANCE, PrecisionReport, require_converter, to_fp16

__all__ = ["DEFAULT_TOLERANCE", "PrecisionReport", "require_converter", "to_fp16"]

"""Lower-precision ONNX files, FP16 and INT8: FP32 islands chosen by measurement on calibration images.

TensorRT 11 and TensorRT-RTX build *strongly typed* networks: there is no
FP16 builder flag, every tensor keeps the type the ONNX file gives it. So an
FP16 engine needs an ONNX file whose tensors are already FP16, with FP32
"islands" where FP16 loses too much, and FP32 inputs and outputs so callers
never see a half-precision tensor. An INT8 file is the standard QDQ form with
FP32 islands chosen the same way.

The modules, from the bottom:

- :mod:`.graph`: ONNX graph helpers (producers, consumers, constants, shapes);
- :mod:`.spectral`: the FFT lowering inside a graph (DFT nodes, constant DFT matrices);
- :mod:`.measure`: running files in ONNX Runtime (FP16 storage emulated where asked), and comparing outputs;
- :mod:`.islands`: forced and candidate FP32 groups, and range islands measured on calibration images;
- :mod:`.search`: releasing candidate groups one at a time while the file stays within the tolerance;
- :mod:`.report`: the fields and methods the FP16 and INT8 reports share;
- :mod:`.fp16_convert`: one FP16 conversion with a given set of FP32 nodes (onnxconverter-common, repaired);
- :mod:`.fp16`: :func:`~.fp16.to_fp16` and its report;
- :mod:`.int8`: :func:`~.int8.to_int8` (onnxruntime's static quantisation) and its report.
"""

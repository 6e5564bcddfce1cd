"""kernels: the spectral ops as CUDA kernels, TensorRT plugins and torch ops, with their contracts.

One definition per op (``BandSplit``, ``SpectrumMagnitudeMean``), shared by the
ONNX node (``specdet.export.plugin_ops``), the plugin, the reference and the docs:

- ``<op>/<op>.cu`` + ``<op>/<op>.h``: the kernels and a plain C launch function
  with its parameter struct (no TensorRT); ``common/``: the shared device helpers;
- ``<op>/plugin.cpp`` + ``plugin_library.cpp``: the TensorRT IPluginV3 plugins
  (namespace ``specdet``; one skeleton, ``common/trt_plugin_base.h``), built where
  TensorRT headers are;
- ``<op>/contract.json`` + ``<op>/golden/``: inputs, outputs, attributes and
  ranges, tolerances per dtype, golden data (:mod:`specdet.kernels.contract`);
- :mod:`specdet.kernels.reference`: the float64 NumPy references;
- :mod:`specdet.kernels.build` (CMake, ``CMakeLists.txt``), :mod:`specdet.kernels.library`
  (ctypes), :mod:`specdet.kernels.torch_ops` (CUDA kernels of the ``specdet::`` torch ops),
  :mod:`specdet.kernels.plugin_registry` (Python stand-in creators, TensorRT-RTX parse/build report).
"""

from specdet._shadowing import hand_over

hand_over(__name__)  # imported as a bare `kernels` from the repository root: the installed package instead

"""The C and C++ runtime (libspecdet_runtime): sources, the build entry (``python -m specdet.runtime.cpp.build``)
and a ctypes binding of its C ABI (:mod:`specdet.runtime.cpp.binding`) for tests and benchmarks."""

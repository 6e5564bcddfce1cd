// What a backend does: load one artifact, say where its manifest is, and run preprocessed batches.
// Backends must allow run() from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "manifest.hpp"

namespace specdet {

// The options the C ABI collects (see specdet_options_set_* in specdet.h).
struct Options {
  std::string backend = "auto";
  std::string onnxruntime_library;
  std::string manifest;
  std::string plugin_library;
  std::string tensorrt_library;
  int64_t intra_op_threads = 0;
  int64_t device = 0;
  bool cuda_graphs = false;
  ImageLimits limits;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual const Manifest& manifest() const = 0;
  // `input`: count * 3 * crop * crop floats; writes count logits and probabilities. Thread-safe.
  virtual void run(const float* input, int64_t count, float* logits, float* probabilities) const = 0;
};

std::unique_ptr<Backend> open_onnxruntime(const std::string& artifact, const Options& options);
// `manifest`: the engine's, found before the backend opens (see open_backend in detector.cpp).
std::unique_ptr<Backend> open_tensorrt(const std::string& artifact, const Options& options, Manifest manifest);

// The manifest the options name, else nullptr (then find_manifest looks for the artifact's).
std::unique_ptr<Manifest> manifest_from_options(const Options& options);

// IEEE half <-> float, round to nearest even as numpy's astype(float16).
uint16_t float_to_half(float value);
float half_to_float(uint16_t value);

}  // namespace specdet

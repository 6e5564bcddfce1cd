// The detector behind the C ABI: a backend plus the manifest's preprocessing and threshold.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"

namespace specdet {

// An input as the caller gave it; decoded when scored.
struct Input {
  enum class Kind { Encoded, Pixels } kind = Kind::Encoded;
  const uint8_t* data = nullptr;  // borrowed, or owned.data()
  size_t size = 0;
  int width = 0, height = 0, format = 0;
  size_t stride = 0;
  std::vector<uint8_t> owned;  // the file's bytes for images made from a path
};

class Detector {
 public:
  Detector(const std::string& artifact, const Options& options);

  const Manifest& manifest() const { return backend_->manifest(); }
  const char* backend_name() const { return backend_->name(); }
  int64_t input_size() const;

  // The RGB image of an input: decoded, converted, oriented, within the limits.
  Rgb load(const Input& input) const;
  void preprocess(const Input& input, float* out) const;

  // See specdet_detector_score. statuses may be null; the arrays hold `count` elements. Returns the
  // message of the last image that could not be read (statuses given), or "".
  // Run preprocessed tensors (count * input_size floats) in batches of at most max_batch.
  void infer(const float* input, size_t count, float* probabilities, float* logits, int32_t* labels) const;

  std::string score(const Input* const* inputs, size_t count, float* probabilities, float* logits, int32_t* labels,
             int32_t* statuses) const;

  // The label of a score: SPECDET_LABEL_NONE when it is not a probability (never labelled).
  int32_t label(float probability, float logit) const;

 private:
  std::unique_ptr<Backend> backend_;
  ImageLimits limits_;
};

}  // namespace specdet

#include "detector.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "error.hpp"

namespace specdet {
namespace {

std::unique_ptr<Backend> open_backend(const std::string& artifact, const Options& options) {
  if (!file_exists(artifact)) fail(SPECDET_ERROR_IO, "artifact " + artifact + " not found: check the path");
  std::string backend = options.backend;
  if (backend == "auto") {
    if (lower_suffix(artifact) == ".onnx") backend = "onnxruntime";
    else if (is_engine(artifact)) backend = "tensorrt";
    else fail(SPECDET_ERROR_INVALID_ARGUMENT, "cannot tell the backend of " + artifact +
                                                  " from its suffix: set the option backend (onnxruntime, tensorrt)");
  }
  if (backend == "onnxruntime") return open_onnxruntime(artifact, options);
  // An engine's manifest is a file beside it, so it is found before the backend opens: a library
  // built without TensorRT reports a missing or broken one as a build with it (and Python) does.
  std::unique_ptr<Manifest> named = manifest_from_options(options);
  return open_tensorrt(artifact, options, named ? std::move(*named) : find_manifest(artifact, nullptr));
}

}  // namespace

Detector::Detector(const std::string& artifact, const Options& options)
    : backend_(open_backend(artifact, options)), limits_(options.limits) {}

int64_t Detector::input_size() const {
  const int64_t crop = manifest().preprocessing.crop;
  return 3 * crop * crop;
}

Rgb Detector::load(const Input& input) const {
  if (input.kind == Input::Kind::Encoded) return decode(input.data, input.size, limits_);
  check_size(input.width, input.height, limits_);
  Rgb out;
  const int channels = input.format == SPECDET_PIXELS_RGB8 ? 3 : input.format == SPECDET_PIXELS_RGBA8 ? 4 : 1;
  to_rgb(input.data, input.stride, channels, input.width, input.height, out);
  return out;
}

void Detector::preprocess(const Input& input, float* out) const {
  specdet::preprocess(load(input), manifest().preprocessing, out);
}

void Detector::infer(const float* input, size_t count, float* probabilities, float* logits, int32_t* labels) const {
  const size_t size = static_cast<size_t>(input_size());
  const size_t step = static_cast<size_t>(manifest().max_batch), least = static_cast<size_t>(manifest().min_batch);
  std::vector<float> padded, batch_logits, batch_probabilities;
  for (size_t start = 0; start < count; start += step) {
    const size_t n = std::min(count - start, step), rows = std::max(n, least);
    const float* data = input + start * size;
    if (rows > n) {  // below the artifact's minimum batch: pad with copies of the first tensor
      padded.assign(data, data + n * size);
      for (size_t r = n; r < rows; ++r) padded.insert(padded.end(), data, data + size);
      data = padded.data();
    }
    batch_logits.resize(rows);
    batch_probabilities.resize(rows);
    backend_->run(data, static_cast<int64_t>(rows), batch_logits.data(), batch_probabilities.data());
    for (size_t r = 0; r < n; ++r) {
      if (probabilities) probabilities[start + r] = batch_probabilities[r];
      if (logits) logits[start + r] = batch_logits[r];
      if (labels) labels[start + r] = batch_probabilities[r] >= manifest().threshold ? SPECDET_LABEL_FAKE : SPECDET_LABEL_REAL;
    }
  }
}

std::string Detector::score(const Input* const* inputs, size_t count, float* probabilities, float* logits, int32_t* labels,
                     int32_t* statuses) const {
  const size_t size = static_cast<size_t>(input_size());
  const size_t step = static_cast<size_t>(manifest().max_batch);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> batch, batch_logits, batch_probabilities;
  std::vector<size_t> which;  // index of each batch row in the caller's arrays
  std::string last_message;
  for (size_t start = 0; start < count; start += step) {
    const size_t end = std::min(count, start + step);
    batch.resize((end - start) * size);
    which.clear();
    for (size_t i = start; i < end; ++i) {
      if (statuses) statuses[i] = SPECDET_OK;
      try {
        preprocess(*inputs[i], batch.data() + which.size() * size);
        which.push_back(i);
      } catch (const Error& err) {
        const std::string message = "image " + std::to_string(i) + ": " + err.what();
        if (!statuses) fail(err.status(), message);
        statuses[i] = err.status();
        last_message = message;
        if (probabilities) probabilities[i] = nan;
        if (logits) logits[i] = nan;
        if (labels) labels[i] = SPECDET_LABEL_NONE;
      }
    }
    if (which.empty()) continue;
    // A batch below the artifact's minimum is padded with copies of its first image.
    const size_t rows = std::max(which.size(), static_cast<size_t>(manifest().min_batch));
    batch.resize(rows * size);
    for (size_t r = which.size(); r < rows; ++r) std::copy_n(batch.data(), size, batch.data() + r * size);
    batch_logits.resize(rows);
    batch_probabilities.resize(rows);
    backend_->run(batch.data(), static_cast<int64_t>(rows), batch_logits.data(), batch_probabilities.data());
    for (size_t r = 0; r < which.size(); ++r) {
      const size_t i = which[r];
      if (probabilities) probabilities[i] = batch_probabilities[r];
      if (logits) logits[i] = batch_logits[r];
      if (labels) labels[i] = batch_probabilities[r] >= manifest().threshold ? SPECDET_LABEL_FAKE : SPECDET_LABEL_REAL;
    }
  }
  return last_message;
}

}  // namespace specdet

#include "detector.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <new>

#include "error.hpp"

namespace specdet {
namespace {

// The message of SPECDET_ERROR_NON_FINITE_SCORE, runtime/detector.py's NON_FINITE word for word.
constexpr const char* kNonFinite = "the model produced a non-finite score";

// runtime/detector.py's rule: a score is labelled only when its probability is in [0, 1] and its
// logit is a number (NaN compares false both ways: a NaN probability would otherwise be "real").
bool labellable(float probability, float logit) {
  return probability >= 0.0f && probability <= 1.0f && !std::isnan(logit);
}

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

// Floats in `rows` tensors of `size` floats; a product that overflows size_t is refused, never wrapped
// into a small buffer that the batch would then overrun.
size_t elements(size_t rows, size_t size) {
  if (size != 0 && rows > std::numeric_limits<size_t>::max() / size)
    fail(SPECDET_ERROR_OUT_OF_MEMORY, "a batch of " + std::to_string(rows) + " tensors of " + std::to_string(size) +
                                          " floats is larger than memory can hold");
  return rows * size;
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
  specdet::preprocess(load(input), manifest().preprocessing, limits_, out);
}

void Detector::infer(const float* input, size_t count, float* probabilities, float* logits, int32_t* labels) const {
  const size_t size = static_cast<size_t>(input_size());
  const size_t step = static_cast<size_t>(manifest().max_batch), least = static_cast<size_t>(manifest().min_batch);
  std::vector<float> padded, batch_logits, batch_probabilities;
  for (size_t start = 0; start < count; start += step) {
    const size_t n = std::min(count - start, step), rows = std::max(n, least);
    const float* data = input + start * size;
    if (rows > n) {  // below the artifact's minimum batch: pad with copies of the first tensor
      padded.reserve(elements(rows, size));
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
      if (labels) labels[start + r] = label(batch_probabilities[r], batch_logits[r]);
    }
  }
}

int32_t Detector::label(float probability, float logit) const {
  if (!labellable(probability, logit)) return SPECDET_LABEL_NONE;
  return probability >= manifest().threshold ? SPECDET_LABEL_FAKE : SPECDET_LABEL_REAL;
}

std::string Detector::score(const Input* const* inputs, size_t count, float* probabilities, float* logits, int32_t* labels,
                     int32_t* statuses) const {
  const size_t size = static_cast<size_t>(input_size());
  const size_t step = static_cast<size_t>(manifest().max_batch);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> batch, batch_logits, batch_probabilities;
  std::vector<size_t> which;  // index of each batch row in the caller's arrays
  std::string last_message;
  // Image i is not scored: its status and label, or (without statuses) the end of the call.
  const auto skip = [&](size_t i, int status, const std::string& reason) {
    const std::string message = "image " + std::to_string(i) + ": " + reason;
    if (!statuses) fail(status, message);
    statuses[i] = status;
    last_message = message;
    if (labels) labels[i] = SPECDET_LABEL_NONE;
  };
  for (size_t start = 0; start < count; start += step) {
    const size_t end = std::min(count, start + step);
    batch.resize(elements(end - start, size));
    which.clear();
    for (size_t i = start; i < end; ++i) {
      if (statuses) statuses[i] = SPECDET_OK;
      int status = SPECDET_OK;
      std::string reason;
      try {
        preprocess(*inputs[i], batch.data() + which.size() * size);
        which.push_back(i);
      } catch (const Error& err) {
        status = err.status();
        reason = err.what();
      } catch (const std::bad_alloc&) {  // one image too large for this machine costs that image only
        status = SPECDET_ERROR_OUT_OF_MEMORY;
        reason = "not enough memory to decode it";
      }
      if (status != SPECDET_OK) {
        skip(i, status, reason);
        if (probabilities) probabilities[i] = nan;
        if (logits) logits[i] = nan;
      }
    }
    if (which.empty()) continue;
    // A batch below the artifact's minimum is padded with copies of its first image.
    const size_t rows = std::max(which.size(), static_cast<size_t>(manifest().min_batch));
    batch.resize(elements(rows, size));
    for (size_t r = which.size(); r < rows; ++r) std::copy_n(batch.data(), size, batch.data() + r * size);
    batch_logits.resize(rows);
    batch_probabilities.resize(rows);
    backend_->run(batch.data(), static_cast<int64_t>(rows), batch_logits.data(), batch_probabilities.data());
    for (size_t r = 0; r < which.size(); ++r) {
      const size_t i = which[r];
      if (probabilities) probabilities[i] = batch_probabilities[r];
      if (logits) logits[i] = batch_logits[r];
      if (!labellable(batch_probabilities[r], batch_logits[r])) skip(i, SPECDET_ERROR_NON_FINITE_SCORE, kNonFinite);
      else if (labels) labels[i] = label(batch_probabilities[r], batch_logits[r]);
    }
  }
  return last_message;
}

}  // namespace specdet

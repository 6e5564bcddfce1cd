// specdet.hpp: header-only C++17 wrapper of specdet.h. RAII handles, exceptions instead of status
// codes, views instead of pointer + length pairs. It calls only the C ABI, so a program built with it
// depends on libspecdet_runtime's C symbols alone (no C++ ABI across the library boundary).
//
//     specdet::Detector detector("model.onnx");
//     specdet::Score score = detector.score(specdet::Image::file("cat.jpg"));
//     std::cout << score.probability << (score.fake ? " fake\n" : " real\n");
//
// Thread safety is the C ABI's: one Detector may score from many threads; Options are not shared
// while being set; Images are immutable.
#ifndef SPECDET_HPP
#define SPECDET_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "specdet/specdet.h"

namespace specdet {

// A failed call: what() is specdet_last_error(), status() the code.
class Error : public std::runtime_error {
 public:
  Error(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const noexcept { return status_; }

 private:
  int status_;
};

namespace detail {
inline void check(int status) {
  if (status != SPECDET_OK) throw Error(status, specdet_last_error());
}
}  // namespace detail

// A read-only view of contiguous elements (std::span is C++20).
template <typename T>
struct View {
  T* data = nullptr;
  size_t size = 0;
  View() = default;
  View(T* d, size_t n) : data(d), size(n) {}
  template <typename Container>
  View(Container& c) : data(c.data()), size(c.size()) {}  // NOLINT: implicit on purpose, like span
};

class Options {
 public:
  Options() {
    specdet_options* raw = nullptr;
    detail::check(specdet_options_create(&raw));
    handle_.reset(raw);
  }
  Options& set(const char* key, const std::string& value) {
    detail::check(specdet_options_set_string(handle_.get(), key, value.c_str()));
    return *this;
  }
  Options& set(const char* key, const char* value) { return set(key, std::string(value)); }
  Options& set(const char* key, int64_t value) {
    detail::check(specdet_options_set_int(handle_.get(), key, value));
    return *this;
  }
  Options& set(const char* key, int value) { return set(key, static_cast<int64_t>(value)); }
  const specdet_options* get() const { return handle_.get(); }

 private:
  struct Deleter {
    void operator()(specdet_options* p) const { specdet_options_destroy(p); }
  };
  std::unique_ptr<specdet_options, Deleter> handle_;
};

// An input image. Images made by encoded() and pixels() borrow the caller's bytes, which must outlive
// them; file() owns a copy.
class Image {
 public:
  static Image encoded(View<const uint8_t> bytes) {
    specdet_image* raw = nullptr;
    detail::check(specdet_image_create_encoded(bytes.data, bytes.size, &raw));
    return Image(raw);
  }
  static Image file(const std::string& path) {
    specdet_image* raw = nullptr;
    detail::check(specdet_image_create_file(path.c_str(), &raw));
    return Image(raw);
  }
  static Image pixels(const uint8_t* data, int32_t width, int32_t height, size_t row_stride,
                      int32_t format = SPECDET_PIXELS_RGB8) {
    specdet_image* raw = nullptr;
    detail::check(specdet_image_create_pixels(data, width, height, row_stride, format, &raw));
    return Image(raw);
  }
  const specdet_image* get() const { return handle_.get(); }

 private:
  explicit Image(specdet_image* raw) : handle_(raw) {}
  struct Deleter {
    void operator()(specdet_image* p) const { specdet_image_destroy(p); }
  };
  std::unique_ptr<specdet_image, Deleter> handle_;
};

struct Score {
  int status = SPECDET_OK;  // not SPECDET_OK: the image could not be read, see message
  float probability = 0.0f;
  float logit = 0.0f;
  bool fake = false;
  std::string message;
  bool ok() const { return status == SPECDET_OK; }
};

class Detector {
 public:
  explicit Detector(const std::string& artifact, const Options* options = nullptr) {
    specdet_detector* raw = nullptr;
    detail::check(specdet_detector_create(artifact.c_str(), options ? options->get() : nullptr, &raw));
    handle_.reset(raw);
  }
  Detector(const std::string& artifact, const Options& options) : Detector(artifact, &options) {}

  int64_t get_int(const char* key) const {
    int64_t value = 0;
    detail::check(specdet_detector_get_int(handle_.get(), key, &value));
    return value;
  }
  std::string get_string(const char* key) const {
    size_t length = 0;
    int status = specdet_detector_get_string(handle_.get(), key, nullptr, 0, &length);
    if (status != SPECDET_ERROR_BUFFER_TOO_SMALL) detail::check(status);
    std::string value(length + 1, '\0');
    detail::check(specdet_detector_get_string(handle_.get(), key, &value[0], value.size(), &length));
    value.resize(length);
    return value;
  }
  double threshold() const {
    double value = 0;
    detail::check(specdet_detector_threshold(handle_.get(), &value));
    return value;
  }

  // Scores of a batch; an unreadable image gets its status and message instead of throwing.
  std::vector<Score> score(View<const Image> images) const {
    std::vector<const specdet_image*> raw(images.size);
    for (size_t i = 0; i < images.size; ++i) raw[i] = images.data[i].get();
    std::vector<float> probabilities(images.size), logits(images.size);
    std::vector<int32_t> labels(images.size), statuses(images.size);
    detail::check(specdet_detector_score(handle_.get(), raw.data(), raw.size(), probabilities.data(), logits.data(),
                                         labels.data(), statuses.data(), images.size));
    std::vector<Score> out(images.size);
    for (size_t i = 0; i < images.size; ++i) {
      out[i].status = statuses[i];
      out[i].probability = probabilities[i];
      out[i].logit = logits[i];
      out[i].fake = labels[i] == SPECDET_LABEL_FAKE;
      if (statuses[i] != SPECDET_OK) out[i].message = message_of(raw[i], statuses[i]);
    }
    return out;
  }

  // One image; throws Error when it cannot be read.
  Score score(const Image& image) const {
    const specdet_image* raw = image.get();
    Score out;
    int32_t label = SPECDET_LABEL_NONE;
    detail::check(specdet_detector_score(handle_.get(), &raw, 1, &out.probability, &out.logit, &label, nullptr, 1));
    out.fake = label == SPECDET_LABEL_FAKE;
    return out;
  }

  // The model's input tensor for one image: [3, crop, crop] floats.
  std::vector<float> preprocess(const Image& image) const {
    std::vector<float> out(static_cast<size_t>(get_int("input_size")));
    detail::check(specdet_detector_preprocess(handle_.get(), image.get(), out.data(), out.size()));
    return out;
  }

  const specdet_detector* get() const { return handle_.get(); }

 private:
  // Why one image was not scored: its score was not finite (the library's message for that status, the
  // Python runtime's words), or it was unreadable, and preprocessing it alone fails with that message.
  std::string message_of(const specdet_image* image, int code) const {
    if (code == SPECDET_ERROR_NON_FINITE_SCORE) return "the model produced a non-finite score";
    std::vector<float> scratch(static_cast<size_t>(get_int("input_size")));
    const int status = specdet_detector_preprocess(handle_.get(), image, scratch.data(), scratch.size());
    return status == SPECDET_OK ? std::string() : std::string(specdet_last_error());
  }

  struct Deleter {
    void operator()(specdet_detector* p) const { specdet_detector_destroy(p); }
  };
  std::unique_ptr<specdet_detector, Deleter> handle_;
};

}  // namespace specdet

#endif  // SPECDET_HPP

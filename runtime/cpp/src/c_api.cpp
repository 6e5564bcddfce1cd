// The C ABI: argument checks, then the C++ core inside one guard that turns every exception into a
// status code and the thread-local message. Nothing may unwind across the extern "C" boundary.
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "detector.hpp"
#include "error.hpp"
#include "limits.hpp"
#include "specdet/specdet.h"

#ifndef SPECDET_VERSION
#define SPECDET_VERSION "0.0.0"
#endif

struct specdet_options {
  specdet::Options options;
};

struct specdet_image {
  specdet::Input input;
};

struct specdet_detector {
  explicit specdet_detector(const std::string& path, const specdet::Options& options) : detector(path, options) {}
  specdet::Detector detector;
};

namespace {

thread_local std::string last_error;

int fail(int status, const std::string& message) {
  last_error = message;
  return status;
}

// Run `body` (returning a status); exceptions become statuses with messages.
template <typename Body>
int guard(Body&& body) noexcept {
  last_error.clear();
  try {
    return body();
  } catch (const specdet::Error& err) {
    return fail(err.status(), err.what());
  } catch (const std::bad_alloc&) {
    return fail(SPECDET_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& err) {
    return fail(SPECDET_ERROR_INTERNAL, std::string("internal error: ") + err.what());
  } catch (...) {
    return fail(SPECDET_ERROR_INTERNAL, "internal error: unknown exception");
  }
}

#define REQUIRE(condition, message) \
  if (!(condition)) return fail(SPECDET_ERROR_INVALID_ARGUMENT, message)

}  // namespace

extern "C" {

int specdet_abi_version(void) { return SPECDET_ABI_VERSION; }

const char* specdet_version_string(void) { return SPECDET_VERSION; }

const char* specdet_last_error(void) { return last_error.c_str(); }

const char* specdet_status_name(int status) {
  switch (status) {
    case SPECDET_OK: return "SPECDET_OK";
    case SPECDET_ERROR_INVALID_ARGUMENT: return "SPECDET_ERROR_INVALID_ARGUMENT";
    case SPECDET_ERROR_BUFFER_TOO_SMALL: return "SPECDET_ERROR_BUFFER_TOO_SMALL";
    case SPECDET_ERROR_UNKNOWN_OPTION: return "SPECDET_ERROR_UNKNOWN_OPTION";
    case SPECDET_ERROR_IO: return "SPECDET_ERROR_IO";
    case SPECDET_ERROR_MANIFEST: return "SPECDET_ERROR_MANIFEST";
    case SPECDET_ERROR_BACKEND: return "SPECDET_ERROR_BACKEND";
    case SPECDET_ERROR_IMAGE: return "SPECDET_ERROR_IMAGE";
    case SPECDET_ERROR_OUT_OF_MEMORY: return "SPECDET_ERROR_OUT_OF_MEMORY";
    case SPECDET_ERROR_UNSUPPORTED: return "SPECDET_ERROR_UNSUPPORTED";
    case SPECDET_ERROR_INTERNAL: return "SPECDET_ERROR_INTERNAL";
    case SPECDET_ERROR_NON_FINITE_SCORE: return "SPECDET_ERROR_NON_FINITE_SCORE";
    default: return "unknown status";
  }
}

// ---- options ---------------------------------------------------------------------------------

int specdet_options_create(specdet_options** out) {
  return guard([&] {
    REQUIRE(out, "specdet_options_create: out is NULL");
    *out = new specdet_options();
    return SPECDET_OK;
  });
}

void specdet_options_destroy(specdet_options* options) { delete options; }

int specdet_options_set_string(specdet_options* options, const char* key, const char* value) {
  return guard([&] {
    REQUIRE(options && key && value, "specdet_options_set_string: options, key and value must not be NULL");
    auto& o = options->options;
    const std::string k = key;
    if (k == "backend") {
      const std::string v = value;
      REQUIRE(v == "auto" || v == "onnxruntime" || v == "tensorrt",
              "option backend must be auto, onnxruntime or tensorrt, not '" + v + "'");
      o.backend = v;
    } else if (k == "onnxruntime_library") {
      o.onnxruntime_library = value;
    } else if (k == "manifest") {
      o.manifest = value;
    } else if (k == "plugin_library") {
      o.plugin_library = value;
    } else if (k == "tensorrt_library") {
      o.tensorrt_library = value;
    } else {
      return fail(SPECDET_ERROR_UNKNOWN_OPTION,
                  "unknown string option '" + k + "': known: backend, onnxruntime_library, manifest, plugin_library, "
                  "tensorrt_library");
    }
    return SPECDET_OK;
  });
}

int specdet_options_set_int(specdet_options* options, const char* key, int64_t value) {
  return guard([&] {
    REQUIRE(options && key, "specdet_options_set_int: options and key must not be NULL");
    auto& o = options->options;
    const std::string k = key;
    // The ranges of specdet.limits (check_count's words): 100000 threads would only thrash.
    auto within = [&](int64_t low, int64_t high) {
      if (value < low || value > high)
        throw specdet::Error(SPECDET_ERROR_INVALID_ARGUMENT, "option " + k + "=" + std::to_string(value) +
                                                                " is out of range: give a whole number from " +
                                                                std::to_string(low) + " to " + std::to_string(high));
    };
    if (k == "intra_op_threads") {
      within(0, specdet::limits::kMaxThreads);
      o.intra_op_threads = value;
    } else if (k == "max_pixels") {
      within(1, specdet::limits::kMaxPixelsCeiling);
      o.limits.max_pixels = value;
    } else if (k == "min_side") {
      within(1, INT64_MAX);
      o.limits.min_side = value;
    } else if (k == "device") {
      within(0, INT32_MAX);
      o.device = value;
    } else if (k == "cuda_graphs") {
      o.cuda_graphs = value != 0;
    } else {
      return fail(SPECDET_ERROR_UNKNOWN_OPTION, "unknown integer option '" + k +
                                                    "': known: intra_op_threads, max_pixels, min_side, device, cuda_graphs");
    }
    return SPECDET_OK;
  });
}

// ---- images ----------------------------------------------------------------------------------

int specdet_image_create_encoded(const uint8_t* data, size_t size, specdet_image** out) {
  return guard([&] {
    REQUIRE(out, "specdet_image_create_encoded: out is NULL");
    *out = nullptr;
    REQUIRE(data || size == 0, "specdet_image_create_encoded: data is NULL");
    auto image = new specdet_image();
    image->input.kind = specdet::Input::Kind::Encoded;
    image->input.data = data;
    image->input.size = size;
    *out = image;
    return SPECDET_OK;
  });
}

int specdet_image_create_file(const char* path, specdet_image** out) {
  return guard([&] {
    REQUIRE(out, "specdet_image_create_file: out is NULL");
    *out = nullptr;
    REQUIRE(path, "specdet_image_create_file: path is NULL");
    const std::string bytes = specdet::read_file(path);
    auto image = std::make_unique<specdet_image>();
    image->input.kind = specdet::Input::Kind::Encoded;
    image->input.owned.assign(bytes.begin(), bytes.end());
    image->input.data = image->input.owned.data();
    image->input.size = image->input.owned.size();
    *out = image.release();
    return SPECDET_OK;
  });
}

int specdet_image_create_pixels(const uint8_t* pixels, int32_t width, int32_t height, size_t row_stride,
                                int32_t format, specdet_image** out) {
  return guard([&] {
    REQUIRE(out, "specdet_image_create_pixels: out is NULL");
    *out = nullptr;
    REQUIRE(pixels, "specdet_image_create_pixels: pixels is NULL");
    const int channels = format == SPECDET_PIXELS_RGB8 ? 3 : format == SPECDET_PIXELS_RGBA8 ? 4
                         : format == SPECDET_PIXELS_GRAY8 ? 1 : 0;
    REQUIRE(channels, "specdet_image_create_pixels: format " + std::to_string(format) +
                          " is not SPECDET_PIXELS_RGB8, _RGBA8 or _GRAY8");
    REQUIRE(width > 0 && height > 0, "specdet_image_create_pixels: width and height must be positive, not " +
                                         std::to_string(width) + "x" + std::to_string(height));
    REQUIRE(row_stride >= static_cast<size_t>(width) * channels,
            "specdet_image_create_pixels: row_stride " + std::to_string(row_stride) + " is below width * channels = " +
                std::to_string(static_cast<size_t>(width) * channels));
    // The last row ends at (height - 1) * row_stride + width * channels: an address past the end of
    // memory is a caller's mistake to refuse, not one to wrap around.
    REQUIRE(static_cast<size_t>(height - 1) <= (SIZE_MAX - static_cast<size_t>(width) * channels) / row_stride,
            "specdet_image_create_pixels: " + std::to_string(height) + " rows of " + std::to_string(row_stride) +
                " bytes do not fit in memory");
    auto image = new specdet_image();
    image->input.kind = specdet::Input::Kind::Pixels;
    image->input.data = pixels;
    image->input.width = width;
    image->input.height = height;
    image->input.stride = row_stride;
    image->input.format = format;
    *out = image;
    return SPECDET_OK;
  });
}

void specdet_image_destroy(specdet_image* image) { delete image; }

// ---- detectors -------------------------------------------------------------------------------

int specdet_detector_create(const char* artifact_path, const specdet_options* options, specdet_detector** out) {
  return guard([&] {
    REQUIRE(out, "specdet_detector_create: out is NULL");
    *out = nullptr;
    REQUIRE(artifact_path, "specdet_detector_create: artifact_path is NULL");
    static const specdet::Options defaults;
    *out = new specdet_detector(artifact_path, options ? options->options : defaults);
    return SPECDET_OK;
  });
}

void specdet_detector_destroy(specdet_detector* detector) { delete detector; }

int specdet_detector_get_int(const specdet_detector* detector, const char* key, int64_t* value) {
  return guard([&] {
    REQUIRE(detector && key && value, "specdet_detector_get_int: detector, key and value must not be NULL");
    const auto& m = detector->detector.manifest();
    const std::string k = key;
    if (k == "crop") *value = m.preprocessing.crop;
    else if (k == "resize") *value = m.preprocessing.resize;
    else if (k == "min_batch") *value = m.min_batch;
    else if (k == "max_batch") *value = m.max_batch;
    else if (k == "input_size") *value = detector->detector.input_size();
    else return fail(SPECDET_ERROR_UNKNOWN_OPTION, "unknown integer key '" + k +
                                                       "': known: crop, resize, min_batch, max_batch, input_size");
    return SPECDET_OK;
  });
}

int specdet_detector_threshold(const specdet_detector* detector, double* threshold) {
  return guard([&] {
    REQUIRE(detector && threshold, "specdet_detector_threshold: detector and threshold must not be NULL");
    *threshold = detector->detector.manifest().threshold;
    return SPECDET_OK;
  });
}

int specdet_detector_get_string(const specdet_detector* detector, const char* key, char* buffer, size_t capacity,
                                size_t* length) {
  return guard([&] {
    REQUIRE(detector && key, "specdet_detector_get_string: detector and key must not be NULL");
    REQUIRE(buffer || capacity == 0, "specdet_detector_get_string: buffer is NULL with a capacity above 0");
    const auto& d = detector->detector;
    const auto& m = d.manifest();
    const std::string k = key;
    std::string value;
    if (k == "architecture") value = m.architecture;
    else if (k == "precision") value = m.precision;
    else if (k == "backend") value = d.backend_name();
    else if (k == "interpolation") value = m.preprocessing.filter == specdet::Filter::Bicubic ? "bicubic" : "bilinear";
    else if (k == "manifest") value = m.text;
    else if (k == "manifest_source") value = m.source;
    else return fail(SPECDET_ERROR_UNKNOWN_OPTION, "unknown string key '" + k +
                                                       "': known: architecture, precision, backend, interpolation, "
                                                       "manifest, manifest_source");
    if (length) *length = value.size();
    if (capacity < value.size() + 1)
      return fail(SPECDET_ERROR_BUFFER_TOO_SMALL, "specdet_detector_get_string: " + k + " needs " +
                                                      std::to_string(value.size() + 1) + " bytes, the buffer has " +
                                                      std::to_string(capacity));
    std::memcpy(buffer, value.c_str(), value.size() + 1);
    return SPECDET_OK;
  });
}

int specdet_detector_score(const specdet_detector* detector, const specdet_image* const* images, size_t count,
                           float* probabilities, float* logits, int32_t* labels, int32_t* statuses, size_t capacity) {
  return guard([&] {
    REQUIRE(detector, "specdet_detector_score: detector is NULL");
    REQUIRE(images || count == 0, "specdet_detector_score: images is NULL");
    REQUIRE(count <= SIZE_MAX / sizeof(specdet_image*),
            "specdet_detector_score: count " + std::to_string(count) + " is more images than an array can hold");
    if (capacity < count && (probabilities || logits || labels || statuses))
      return fail(SPECDET_ERROR_BUFFER_TOO_SMALL, "specdet_detector_score: output capacity " + std::to_string(capacity) +
                                                      " is below the " + std::to_string(count) + " images");
    std::vector<const specdet::Input*> inputs(count);
    for (size_t i = 0; i < count; ++i) {
      REQUIRE(images[i], "specdet_detector_score: images[" + std::to_string(i) + "] is NULL");
      inputs[i] = &images[i]->input;
    }
    const std::string skipped =
        detector->detector.score(inputs.data(), count, probabilities, logits, labels, statuses);
    last_error = skipped;  // with statuses: the last unreadable image, the call itself succeeded
    return SPECDET_OK;
  });
}

int specdet_detector_preprocess(const specdet_detector* detector, const specdet_image* image, float* out,
                                size_t capacity) {
  return guard([&] {
    REQUIRE(detector && image && out, "specdet_detector_preprocess: detector, image and out must not be NULL");
    const size_t needed = static_cast<size_t>(detector->detector.input_size());
    if (capacity < needed)
      return fail(SPECDET_ERROR_BUFFER_TOO_SMALL, "specdet_detector_preprocess: the output needs " +
                                                      std::to_string(needed) + " floats, the buffer has " +
                                                      std::to_string(capacity));
    detector->detector.preprocess(image->input, out);
    return SPECDET_OK;
  });
}

int specdet_detector_infer(const specdet_detector* detector, const float* input, size_t input_size, size_t count,
                           float* probabilities, float* logits, int32_t* labels, size_t capacity) {
  return guard([&] {
    REQUIRE(detector, "specdet_detector_infer: detector is NULL");
    REQUIRE(input || count == 0, "specdet_detector_infer: input is NULL");
    const size_t per_image = static_cast<size_t>(detector->detector.input_size());
    REQUIRE(count <= SIZE_MAX / per_image, "specdet_detector_infer: count " + std::to_string(count) + " times " +
                                               std::to_string(per_image) + " floats per image does not fit in a size_t");
    REQUIRE(count == 0 || input_size == count * per_image,
            "specdet_detector_infer: input_size " + std::to_string(input_size) + " is not count * " +
                std::to_string(per_image) + " = " + std::to_string(count * per_image));
    if (capacity < count && (probabilities || logits || labels))
      return fail(SPECDET_ERROR_BUFFER_TOO_SMALL, "specdet_detector_infer: output capacity " + std::to_string(capacity) +
                                                      " is below the " + std::to_string(count) + " tensors");
    detector->detector.infer(input, count, probabilities, logits, labels);
    return SPECDET_OK;
  });
}

}  // extern "C"

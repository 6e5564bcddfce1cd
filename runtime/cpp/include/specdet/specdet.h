/* specdet.h: the C ABI of libspecdet_runtime, the detector runtime for C and C++ services.
 *
 * Load an exported artifact (model.onnx with its manifest inside or beside it, or a TensorRT engine
 * with model.engine.json), hand it images (encoded JPEG/PNG bytes or decoded pixels) and get back the
 * probability that each image is generated ("fake"), its logit and its label. Preprocessing, threshold,
 * tensor names, batch range and precision come from the artifact's manifest, as in the Python runtime.
 *
 * Conventions (those of ONNX Runtime's C API, TensorFlow Lite's c_api.h and llama.h):
 *  - Objects are opaque handles made by *_create and released by *_destroy. *_destroy accepts NULL.
 *    Using a handle after its *_destroy is undefined behaviour (as with free()): the library cannot
 *    detect it, so set your pointer to NULL after destroying.
 *  - Every function that can fail returns an int status: SPECDET_OK (0) or one of SPECDET_ERROR_*.
 *    On failure, specdet_last_error() gives a one-line message for the calling thread; output
 *    arguments are left unspecified unless the function says otherwise. No function aborts on bad input.
 *  - Options are set through functions on an opaque object, so fields can be added without breaking
 *    the ABI.
 *
 * Compatibility rule: specdet_abi_version() returns SPECDET_ABI_VERSION of the library that is loaded.
 * A program built against header version H runs with a library of version L if L >= H and both have
 * the same major part (L / 1000 == H / 1000). Minor versions only add functions, option keys and
 * status codes; a major version may change or remove them. Check at start-up:
 *     if (specdet_abi_version() / 1000 != SPECDET_ABI_VERSION / 1000 ||
 *         specdet_abi_version() < SPECDET_ABI_VERSION) { refuse to run }
 */
#ifndef SPECDET_H
#define SPECDET_H

#include <stddef.h>
#include <stdint.h>

/* The library is built with hidden visibility; only these functions are exported. */
#if defined(SPECDET_BUILDING_LIBRARY) && defined(__GNUC__)
#define SPECDET_API __attribute__((visibility("default")))
#else
#define SPECDET_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Major * 1000 + minor. */
#define SPECDET_ABI_VERSION 1001

/* Status codes. New codes may be added in minor versions: treat unknown non-zero codes as errors. */
#define SPECDET_OK 0
#define SPECDET_ERROR_INVALID_ARGUMENT 1 /* NULL where a value is required, negative size, bad stride... */
#define SPECDET_ERROR_BUFFER_TOO_SMALL 2 /* an output buffer's capacity is below what the call writes */
#define SPECDET_ERROR_UNKNOWN_OPTION 3   /* an option key this library does not know (or of another type) */
#define SPECDET_ERROR_IO 4               /* a file could not be read */
#define SPECDET_ERROR_MANIFEST 5         /* the artifact's manifest is missing, malformed or contradicts the model */
#define SPECDET_ERROR_BACKEND 6          /* the inference library is missing, or failed to load or run the model */
#define SPECDET_ERROR_IMAGE 7            /* undecodable, unsupported, too small or too large image */
#define SPECDET_ERROR_OUT_OF_MEMORY 8
#define SPECDET_ERROR_UNSUPPORTED 9      /* a feature this build lacks (e.g. TensorRT without its headers) */
#define SPECDET_ERROR_INTERNAL 10        /* a bug: please report it with the message */
#define SPECDET_ERROR_NON_FINITE_SCORE 11 /* (1.1) the model's score for this image is not a probability (NaN) */

/* Labels written by the scoring functions. */
#define SPECDET_LABEL_REAL 0
#define SPECDET_LABEL_FAKE 1   /* probability >= the manifest's threshold */
#define SPECDET_LABEL_NONE -1  /* the image was not scored, or its score is not finite (see its status) */

/* Pixel formats of decoded images: 8 bits per channel, channels interleaved, rows top to bottom. */
#define SPECDET_PIXELS_RGB8 1
#define SPECDET_PIXELS_RGBA8 2 /* alpha is composited over white, as the Python runtime does */
#define SPECDET_PIXELS_GRAY8 3

typedef struct specdet_options specdet_options;
typedef struct specdet_detector specdet_detector;
typedef struct specdet_image specdet_image;

/* ---- library -------------------------------------------------------------------------------- */

/* SPECDET_ABI_VERSION of the loaded library. Thread-safe. */
SPECDET_API int specdet_abi_version(void);

/* The library's version, e.g. "0.1.0". The string is static: do not free it. Thread-safe. */
SPECDET_API const char* specdet_version_string(void);

/* The message of the calling thread's last failed call, or "" if none. The string is owned by the
 * library and stays valid until this thread's next specdet_* call. Thread-safe (thread-local). */
SPECDET_API const char* specdet_last_error(void);

/* A static name for a status code ("SPECDET_ERROR_IMAGE", or "unknown status"). Do not free it. */
SPECDET_API const char* specdet_status_name(int status);

/* ---- options (not thread-safe: fill one in a single thread, then share it read-only) ---------- */

/* Create an options object with every option at its default. The caller owns *out and releases it
 * with specdet_options_destroy. */
SPECDET_API int specdet_options_create(specdet_options** out);

/* Release options made by specdet_options_create. NULL is ignored. A detector does not keep a pointer
 * to its options: they may be destroyed right after specdet_detector_create. */
SPECDET_API void specdet_options_destroy(specdet_options* options);

/* Set a string option. The library copies `value`; the caller keeps ownership of both strings.
 * Keys:
 *   "backend"              "auto" (default: by file suffix), "onnxruntime" or "tensorrt"
 *   "onnxruntime_library"  path of libonnxruntime.so (default: $SPECDET_ONNXRUNTIME_LIBRARY, else the
 *                          library found at build time in the onnxruntime Python wheel, else
 *                          "libonnxruntime.so.1" from the dynamic loader's search path)
 *   "manifest"             path of the manifest JSON (default, as the Python runtime: inside the
 *                          .onnx, else <stem>.json beside it; engines: <file>.json beside them)
 *   "plugin_library"       TensorRT: our plugin library to load before deserialising (default: the
 *                          manifest's engine.plugins)
 *   "tensorrt_library"     TensorRT: the runtime library (default: libnvinfer.so.<major of the headers>,
 *                          or libtensorrt_rtx.so.1 for engines the manifest says TensorRT-RTX built)
 * Returns SPECDET_ERROR_UNKNOWN_OPTION for any other key, including integer keys. */
SPECDET_API int specdet_options_set_string(specdet_options* options, const char* key, const char* value);

/* Set an integer option. The caller keeps ownership of `key`.
 * Keys:
 *   "intra_op_threads"  ONNX Runtime threads per inference call, 1 to 1024; 0 = its default (the
 *                       physical cores)
 *   "max_pixels"        images with more pixels (width * height), as stored or once resized for the
 *                       model, are refused; default 64000000, 1 to 178956970 (specdet.limits, as the
 *                       Python runtime)
 *   "min_side"          images whose shorter side is below this are refused; default 1
 *   "device"            TensorRT: CUDA device ordinal (default 0)
 *   "cuda_graphs"       TensorRT: 1 to replay each batch shape as a CUDA graph (default 0)
 * Returns SPECDET_ERROR_UNKNOWN_OPTION for any other key, including string keys, and
 * SPECDET_ERROR_INVALID_ARGUMENT for a value out of range. */
SPECDET_API int specdet_options_set_int(specdet_options* options, const char* key, int64_t value);

/* ---- images: views of the caller's input, immutable once made, shareable between threads ------ */

/* An image from encoded bytes (JPEG or PNG; the format is told by its first bytes). The image
 * BORROWS `data`: it must stay valid and unchanged until specdet_image_destroy. Decoding happens
 * when the image is scored, so corrupt data is reported then. The caller owns *out. */
SPECDET_API int specdet_image_create_encoded(const uint8_t* data, size_t size, specdet_image** out);

/* An image from a file: the library reads the whole file now and owns the copy. The caller owns *out
 * and keeps ownership of `path`. SPECDET_ERROR_IO when the file cannot be read. */
SPECDET_API int specdet_image_create_file(const char* path, specdet_image** out);

/* An image from decoded pixels in one of the SPECDET_PIXELS_* formats. Row y starts at
 * pixels + y * row_stride (bytes; at least width * channels). The image BORROWS `pixels`: it must stay
 * valid and unchanged until specdet_image_destroy. The caller owns *out. */
SPECDET_API int specdet_image_create_pixels(const uint8_t* pixels, int32_t width, int32_t height,
                                            size_t row_stride, int32_t format, specdet_image** out);

/* Release an image. NULL is ignored. The borrowed buffer, if any, stays the caller's. */
SPECDET_API void specdet_image_destroy(specdet_image* image);

/* ---- detectors: thread-safe for scoring; create and destroy from one thread ------------------ */

/* Load an artifact (.onnx, or .engine/.plan with TensorRT) and its manifest. `options` may be NULL
 * for the defaults; it is only read during the call. The caller owns *out and releases it with
 * specdet_detector_destroy. Errors: SPECDET_ERROR_IO (no such file), _MANIFEST, _BACKEND, _UNSUPPORTED. */
SPECDET_API int specdet_detector_create(const char* artifact_path, const specdet_options* options,
                                        specdet_detector** out);

/* Release a detector. NULL is ignored. No other thread may be using it during or after the call. */
SPECDET_API void specdet_detector_destroy(specdet_detector* detector);

/* An integer fact from the manifest: "crop" (input side), "resize" (0 when null), "min_batch",
 * "max_batch", "input_size" (floats per preprocessed image: 3 * crop * crop). Thread-safe. */
SPECDET_API int specdet_detector_get_int(const specdet_detector* detector, const char* key, int64_t* value);

/* The manifest's threshold: a probability at or above it is labelled fake. Thread-safe. */
SPECDET_API int specdet_detector_threshold(const specdet_detector* detector, double* threshold);

/* A string fact: "architecture", "precision", "backend" (which one runs), "interpolation",
 * "manifest" (the manifest's JSON text), "manifest_source" (where it was read from). Copies it,
 * NUL-terminated, into the caller's `buffer` of `capacity` bytes; *length (may be NULL) receives the
 * string's length without the NUL, also when the buffer is too small (SPECDET_ERROR_BUFFER_TOO_SMALL),
 * so a caller can ask with capacity 0 and then allocate length + 1. Thread-safe. */
SPECDET_API int specdet_detector_get_string(const specdet_detector* detector, const char* key, char* buffer,
                                            size_t capacity, size_t* length);

/* Score `count` images. Calls with more images than the manifest's max batch are split into batches
 * internally. The caller owns every buffer: each of `probabilities`, `logits`, `labels` and
 * `statuses` may be NULL (not wanted); a non-NULL one must hold `capacity` >= count elements.
 * Without `statuses`, the first image that cannot be read fails the whole call with its status.
 * With `statuses`, unreadable images get their status (the message of the last one is in
 * specdet_last_error), NaN scores and SPECDET_LABEL_NONE; the others are scored and the call
 * returns SPECDET_OK unless inference itself fails. A score that is not a probability in [0, 1]
 * (NaN from NaN weights, say) is never labelled: that image gets SPECDET_ERROR_NON_FINITE_SCORE
 * and SPECDET_LABEL_NONE like an unreadable one (its probability and logit are left as the model
 * gave them). A `count` no array can hold is SPECDET_ERROR_INVALID_ARGUMENT. Thread-safe: many
 * threads may score with one detector at once. */
SPECDET_API int specdet_detector_score(const specdet_detector* detector, const specdet_image* const* images,
                                       size_t count, float* probabilities, float* logits, int32_t* labels,
                                       int32_t* statuses, size_t capacity);

/* The preprocessed tensor of one image, exactly what the model sees: float32, channels first
 * [3, crop, crop], normalised with the manifest's mean and std. `out` is the caller's buffer of
 * `capacity` floats (at least "input_size"). Thread-safe. */
SPECDET_API int specdet_detector_preprocess(const specdet_detector* detector, const specdet_image* image,
                                            float* out, size_t capacity);

/* Run the model on `count` tensors already preprocessed (as specdet_detector_preprocess writes them):
 * `input` holds count * "input_size" floats, `input_size` is their number (checked). Batches above the
 * manifest's max batch are split. Outputs as in specdet_detector_score (each may be NULL; non-NULL
 * ones hold `capacity` >= count elements); a non-finite score gets SPECDET_LABEL_NONE, never a
 * label, and the call still returns SPECDET_OK. A `count` whose count * "input_size" does not fit in
 * a size_t is SPECDET_ERROR_INVALID_ARGUMENT. For callers that preprocess themselves, and for timing
 * inference apart from decoding. Thread-safe. */
SPECDET_API int specdet_detector_infer(const specdet_detector* detector, const float* input, size_t input_size,
                                       size_t count, float* probabilities, float* logits, int32_t* labels,
                                       size_t capacity);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SPECDET_H */

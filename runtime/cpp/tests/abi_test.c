/* The C ABI's contract, checked from C11 with only specdet.h: versions, NULL and wrong-size
 * arguments, small buffers, unknown options, bad images, per-image statuses, thread-local errors.
 *     specdet-abi-test ARTIFACT.onnx
 * Prints one line per check and "N passed, N failed"; exits 1 if any failed. Use after destroy is
 * undefined behaviour by contract (specdet.h) and is therefore not exercised. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

#include "specdet/specdet.h"

static int passed, failed;

static void expect(int condition, const char* what) {
  if (condition) {
    ++passed;
    printf("ok - %s\n", what);
  } else {
    ++failed;
    printf("not ok - %s (last error: %s)\n", what, specdet_last_error());
  }
}

/* The call returned `want` and, for errors, left a non-empty message. */
static void expect_status(int got, int want, const char* what) {
  char line[512];
  snprintf(line, sizeof line, "%s -> %s%s", what, specdet_status_name(want),
           got == want ? "" : " (got another status)");
  expect(got == want && (want == SPECDET_OK || specdet_last_error()[0] != '\0'), line);
  if (got != want) printf("#   got %s: %s\n", specdet_status_name(got), specdet_last_error());
}

static int other_thread_error_empty(void* unused) {
  (void)unused;
  return specdet_last_error()[0] == '\0';
}

static int score_one(const specdet_detector* d, const specdet_image* image, float* probability) {
  return specdet_detector_score(d, &image, 1, probability, NULL, NULL, NULL, 1);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s ARTIFACT.onnx\n", argv[0]);
    return 2;
  }
  const char* artifact = argv[1];

  /* versions */
  expect(specdet_abi_version() == SPECDET_ABI_VERSION, "specdet_abi_version matches the header");
  expect(specdet_version_string() && specdet_version_string()[0], "version string");
  expect(strcmp(specdet_status_name(SPECDET_ERROR_IMAGE), "SPECDET_ERROR_IMAGE") == 0, "status names");
  expect(strcmp(specdet_status_name(12345), "unknown status") == 0, "unknown status name");

  /* options */
  specdet_options* options = NULL;
  expect_status(specdet_options_create(NULL), SPECDET_ERROR_INVALID_ARGUMENT, "options_create(NULL)");
  expect_status(specdet_options_create(&options), SPECDET_OK, "options_create");
  expect_status(specdet_options_set_string(options, "no_such_option", "x"), SPECDET_ERROR_UNKNOWN_OPTION,
                "unknown string option");
  expect_status(specdet_options_set_int(options, "no_such_option", 1), SPECDET_ERROR_UNKNOWN_OPTION,
                "unknown integer option");
  expect_status(specdet_options_set_int(options, "backend", 1), SPECDET_ERROR_UNKNOWN_OPTION,
                "string option set as integer");
  expect_status(specdet_options_set_string(options, "max_pixels", "1"), SPECDET_ERROR_UNKNOWN_OPTION,
                "integer option set as string");
  expect_status(specdet_options_set_int(options, "max_pixels", 0), SPECDET_ERROR_INVALID_ARGUMENT,
                "max_pixels 0");
  expect_status(specdet_options_set_int(options, "intra_op_threads", -1), SPECDET_ERROR_INVALID_ARGUMENT,
                "negative intra_op_threads");
  expect_status(specdet_options_set_int(options, "intra_op_threads", 100000), SPECDET_ERROR_INVALID_ARGUMENT,
                "intra_op_threads 100000 (above specdet.limits.MAX_THREADS)");
  expect(strstr(specdet_last_error(), "from 0 to 1024") != NULL, "the message gives the range");
  expect_status(specdet_options_set_int(options, "intra_op_threads", 1024), SPECDET_OK, "intra_op_threads 1024");
  expect_status(specdet_options_set_int(options, "max_pixels", 178956971), SPECDET_ERROR_INVALID_ARGUMENT,
                "max_pixels above specdet.limits.MAX_PIXELS_CEILING");
  expect_status(specdet_options_set_int(options, "max_pixels", 178956970), SPECDET_OK, "max_pixels at the ceiling");
  expect_status(specdet_options_set_int(options, "max_pixels", 64000000), SPECDET_OK, "max_pixels back to 64000000");
  expect_status(specdet_options_set_string(options, "backend", "tensorflow"), SPECDET_ERROR_INVALID_ARGUMENT,
                "unknown backend");
  expect_status(specdet_options_set_string(NULL, "backend", "auto"), SPECDET_ERROR_INVALID_ARGUMENT,
                "set_string on NULL options");
  expect_status(specdet_options_set_string(options, NULL, "auto"), SPECDET_ERROR_INVALID_ARGUMENT,
                "set_string with NULL key");
  expect_status(specdet_options_set_string(options, "backend", NULL), SPECDET_ERROR_INVALID_ARGUMENT,
                "set_string with NULL value");
  expect_status(specdet_options_set_int(options, "intra_op_threads", 1), SPECDET_OK, "intra_op_threads 1");
  /* the default is 1, as the Python runtime scores 1-pixel images; 2 here so that one is refused below */
  expect_status(specdet_options_set_int(options, "min_side", 2), SPECDET_OK, "min_side 2");
  expect(specdet_last_error()[0] == '\0', "a successful call clears the last error");
  specdet_options_destroy(NULL);

  /* detectors that cannot be made */
  specdet_detector* detector = (specdet_detector*)&passed; /* must be reset to NULL on failure */
  expect_status(specdet_detector_create(NULL, NULL, &detector), SPECDET_ERROR_INVALID_ARGUMENT, "create(NULL path)");
  expect(detector == NULL, "a failed create sets *out to NULL");
  expect_status(specdet_detector_create(artifact, NULL, NULL), SPECDET_ERROR_INVALID_ARGUMENT, "create(out NULL)");
  expect_status(specdet_detector_create("/no/such/model.onnx", NULL, &detector), SPECDET_ERROR_IO,
                "create(missing file)");
  specdet_options* no_runtime = NULL;
  specdet_options_create(&no_runtime);
  specdet_options_set_string(no_runtime, "onnxruntime_library", "/no/such/libonnxruntime.so.1");
  expect_status(specdet_detector_create(artifact, no_runtime, &detector), SPECDET_ERROR_BACKEND,
                "create without the ONNX Runtime library");
  expect(strstr(specdet_last_error(), "/no/such/libonnxruntime.so.1") != NULL, "the message names the library");
  specdet_options_destroy(no_runtime);
  specdet_options* engine = NULL;
  specdet_options_create(&engine);
  specdet_options_set_string(engine, "backend", "tensorrt");
  int engine_status = specdet_detector_create(artifact, engine, &detector);
  expect(engine_status == SPECDET_ERROR_UNSUPPORTED || engine_status == SPECDET_ERROR_BACKEND ||
             engine_status == SPECDET_ERROR_MANIFEST,
         "tensorrt backend on an ONNX file: unsupported in this build, no TensorRT, or no engine manifest");
  specdet_options_destroy(engine);

  /* a detector */
  expect_status(specdet_detector_create(artifact, options, &detector), SPECDET_OK, "create");
  specdet_options_destroy(options); /* the detector keeps no pointer to its options */
  if (!detector) {
    printf("%d passed, %d failed\n", passed, failed + 1);
    return 1;
  }
  int64_t crop = 0, input_size = 0, value = 0;
  double threshold = -1;
  expect_status(specdet_detector_get_int(detector, "crop", &crop), SPECDET_OK, "get_int crop");
  expect_status(specdet_detector_get_int(detector, "input_size", &input_size), SPECDET_OK, "get_int input_size");
  expect(input_size == 3 * crop * crop, "input_size is 3 * crop * crop");
  expect_status(specdet_detector_get_int(detector, "colour", &value), SPECDET_ERROR_UNKNOWN_OPTION, "unknown int key");
  expect_status(specdet_detector_get_int(detector, "crop", NULL), SPECDET_ERROR_INVALID_ARGUMENT, "get_int NULL value");
  expect_status(specdet_detector_threshold(detector, &threshold), SPECDET_OK, "threshold");
  expect(threshold >= 0 && threshold <= 1, "threshold within [0, 1]");
  size_t length = 0;
  expect_status(specdet_detector_get_string(detector, "backend", NULL, 0, &length), SPECDET_ERROR_BUFFER_TOO_SMALL,
                "get_string with capacity 0");
  expect(length == strlen("onnxruntime"), "length reported with a small buffer");
  char small[4];
  expect_status(specdet_detector_get_string(detector, "backend", small, sizeof small, &length),
                SPECDET_ERROR_BUFFER_TOO_SMALL, "get_string with a 4-byte buffer");
  char name[64];
  expect_status(specdet_detector_get_string(detector, "backend", name, sizeof name, &length), SPECDET_OK, "get_string");
  expect(strcmp(name, "onnxruntime") == 0, "backend is onnxruntime");
  expect_status(specdet_detector_get_string(detector, "backend", NULL, 10, &length), SPECDET_ERROR_INVALID_ARGUMENT,
                "get_string NULL buffer with capacity");
  expect_status(specdet_detector_get_string(detector, "nope", name, sizeof name, NULL), SPECDET_ERROR_UNKNOWN_OPTION,
                "unknown string key");

  /* images with bad arguments */
  enum { W = 48, H = 40 };
  static uint8_t pixels[H][W * 4];
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W * 4; ++x) pixels[y][x] = (uint8_t)(x * 7 + y * 3);
  specdet_image* image = NULL;
  expect_status(specdet_image_create_pixels(NULL, W, H, W * 3, SPECDET_PIXELS_RGB8, &image),
                SPECDET_ERROR_INVALID_ARGUMENT, "pixels NULL");
  expect_status(specdet_image_create_pixels(&pixels[0][0], 0, H, W * 3, SPECDET_PIXELS_RGB8, &image),
                SPECDET_ERROR_INVALID_ARGUMENT, "width 0");
  expect_status(specdet_image_create_pixels(&pixels[0][0], W, -1, W * 3, SPECDET_PIXELS_RGB8, &image),
                SPECDET_ERROR_INVALID_ARGUMENT, "negative height");
  expect_status(specdet_image_create_pixels(&pixels[0][0], W, H, W * 3 - 1, SPECDET_PIXELS_RGB8, &image),
                SPECDET_ERROR_INVALID_ARGUMENT, "stride below width * 3");
  expect_status(specdet_image_create_pixels(&pixels[0][0], W, H, SIZE_MAX / 2, SPECDET_PIXELS_RGB8, &image),
                SPECDET_ERROR_INVALID_ARGUMENT, "rows whose stride * height wraps around size_t");
  expect_status(specdet_image_create_pixels(&pixels[0][0], W, H, W * 4, 99, &image), SPECDET_ERROR_INVALID_ARGUMENT,
                "unknown pixel format");
  expect_status(specdet_image_create_pixels(&pixels[0][0], W, H, W * 4, SPECDET_PIXELS_RGB8, NULL),
                SPECDET_ERROR_INVALID_ARGUMENT, "create_pixels out NULL");
  expect_status(specdet_image_create_encoded(NULL, 10, &image), SPECDET_ERROR_INVALID_ARGUMENT, "encoded NULL data");
  expect_status(specdet_image_create_file("/no/such/image.jpg", &image), SPECDET_ERROR_IO, "file not found");
  expect_status(specdet_image_create_file("/", &image), SPECDET_ERROR_IO, "a folder as a file");

  /* scoring: argument checks */
  specdet_image* good = NULL;
  expect_status(specdet_image_create_pixels(&pixels[0][0], W, H, W * 4, SPECDET_PIXELS_RGB8, &good), SPECDET_OK,
                "an RGB image with padded rows");
  float probabilities[3], logits[3];
  int32_t labels[3], statuses[3];
  const specdet_image* batch[3] = {good, good, good};
  expect_status(specdet_detector_score(detector, batch, 3, probabilities, NULL, NULL, NULL, 2),
                SPECDET_ERROR_BUFFER_TOO_SMALL, "score: capacity below count");
  expect_status(specdet_detector_score(NULL, batch, 1, probabilities, NULL, NULL, NULL, 1),
                SPECDET_ERROR_INVALID_ARGUMENT, "score: NULL detector");
  expect_status(specdet_detector_score(detector, NULL, 1, probabilities, NULL, NULL, NULL, 1),
                SPECDET_ERROR_INVALID_ARGUMENT, "score: NULL images");
  const specdet_image* with_null[2] = {good, NULL};
  expect_status(specdet_detector_score(detector, with_null, 2, probabilities, NULL, NULL, NULL, 2),
                SPECDET_ERROR_INVALID_ARGUMENT, "score: a NULL image in the batch");
  expect_status(specdet_detector_score(detector, batch, 0, NULL, NULL, NULL, NULL, 0), SPECDET_OK, "score: 0 images");
  expect_status(specdet_detector_score(detector, batch, SIZE_MAX, NULL, NULL, NULL, NULL, 0),
                SPECDET_ERROR_INVALID_ARGUMENT, "score: count SIZE_MAX is the caller's error, not an internal one");
  expect_status(specdet_detector_score(detector, batch, 3, probabilities, logits, labels, NULL, 3), SPECDET_OK,
                "score: 3 images");
  expect(probabilities[0] >= 0 && probabilities[0] <= 1 && probabilities[0] == probabilities[2], "probabilities");
  expect(fabsf(1.0f / (1.0f + expf(-logits[0])) - probabilities[0]) < 1e-5f, "probability = sigmoid(logit)");
  expect(labels[0] == (probabilities[0] >= threshold ? SPECDET_LABEL_FAKE : SPECDET_LABEL_REAL), "label rule");
  float* tensor = malloc((size_t)input_size * sizeof(float));
  expect_status(specdet_detector_preprocess(detector, good, tensor, (size_t)input_size - 1),
                SPECDET_ERROR_BUFFER_TOO_SMALL, "preprocess: buffer one float short");
  expect_status(specdet_detector_preprocess(detector, good, tensor, (size_t)input_size), SPECDET_OK, "preprocess");
  float inferred = -1;
  expect_status(specdet_detector_infer(detector, tensor, (size_t)input_size - 1, 1, &inferred, NULL, NULL, 1),
                SPECDET_ERROR_INVALID_ARGUMENT, "infer: input_size not count * input_size");
  expect_status(specdet_detector_infer(detector, tensor, (size_t)input_size, 1, &inferred, NULL, NULL, 0),
                SPECDET_ERROR_BUFFER_TOO_SMALL, "infer: capacity 0");
  /* count * input_size wraps around to a small number that input_size matches: refused, not read past */
  const size_t huge = SIZE_MAX / (size_t)input_size + 2;
  expect_status(specdet_detector_infer(detector, tensor, huge * (size_t)input_size, huge, NULL, NULL, NULL, 0),
                SPECDET_ERROR_INVALID_ARGUMENT, "infer: count * input_size overflows size_t");
  expect_status(specdet_detector_infer(detector, tensor, 0, SIZE_MAX, NULL, NULL, NULL, 0),
                SPECDET_ERROR_INVALID_ARGUMENT, "infer: count SIZE_MAX");
  expect_status(specdet_detector_infer(detector, tensor, (size_t)input_size, 1, &inferred, NULL, NULL, 1), SPECDET_OK,
                "infer a preprocessed tensor");
  expect(inferred == probabilities[0], "infer(preprocess(image)) == score(image)");
  free(tensor);

  /* bad images */
  static const uint8_t garbage[] = "this is text, not an image";
  static const uint8_t gif[] = "GIF89a\x01\x00\x01\x00\x00\x00\x00";
  static const uint8_t jpeg_head[] = {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 'J', 'F', 'I', 'F', 0};
  static const uint8_t png_head[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
  struct {
    const uint8_t* data;
    size_t size;
    const char* what;
  } bad[] = {
      {garbage, 0, "zero-length input"},
      {garbage, sizeof garbage, "text bytes"},
      {gif, sizeof gif, "a GIF (unsupported format)"},
      {jpeg_head, sizeof jpeg_head, "a truncated JPEG header"},
      {png_head, sizeof png_head, "a truncated PNG header"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    specdet_image* b = NULL;
    expect_status(specdet_image_create_encoded(bad[i].data, bad[i].size, &b), SPECDET_OK, "encoded image made lazily");
    float p = 0;
    expect_status(score_one(detector, b, &p), SPECDET_ERROR_IMAGE, bad[i].what);
    specdet_image_destroy(b);
  }
  specdet_image* one = NULL;
  specdet_image_create_pixels(&pixels[0][0], 1, 1, 3, SPECDET_PIXELS_RGB8, &one);
  float p = 0;
  expect_status(score_one(detector, one, &p), SPECDET_ERROR_IMAGE, "a 1x1 image (below min_side 2)");
  expect(strstr(specdet_last_error(), "min_side") != NULL, "the message names the option");

  /* per-image statuses: the bad image is reported, the others scored */
  specdet_image* text = NULL;
  specdet_image_create_encoded(garbage, sizeof garbage, &text);
  const specdet_image* mixed[3] = {good, text, one};
  expect_status(specdet_detector_score(detector, mixed, 3, probabilities, logits, labels, statuses, 3), SPECDET_OK,
                "score with statuses: a batch with unreadable images");
  expect(statuses[0] == SPECDET_OK && statuses[1] == SPECDET_ERROR_IMAGE && statuses[2] == SPECDET_ERROR_IMAGE,
         "statuses per image");
  expect(isnan(probabilities[1]) && labels[1] == SPECDET_LABEL_NONE && labels[0] != SPECDET_LABEL_NONE,
         "unread images get NaN and SPECDET_LABEL_NONE");
  expect(strstr(specdet_last_error(), "image 2") != NULL, "last error names the last unreadable image");
  specdet_image_destroy(text);

  /* the pixel limit */
  specdet_options* limited = NULL;
  specdet_options_create(&limited);
  specdet_options_set_int(limited, "max_pixels", W * H - 1);
  specdet_options_set_int(limited, "min_side", 1);
  specdet_detector* strict = NULL;
  expect_status(specdet_detector_create(artifact, limited, &strict), SPECDET_OK, "create with max_pixels");
  specdet_options_destroy(limited);
  expect_status(score_one(strict, good, &p), SPECDET_ERROR_IMAGE, "an image above max_pixels");
  expect_status(score_one(strict, one, &p), SPECDET_OK, "a 1x1 image with min_side 1");
  specdet_detector_destroy(strict);

  /* the last error is per thread */
  score_one(detector, one, &p);
  thrd_t thread;
  int clean = 0;
  thrd_create(&thread, other_thread_error_empty, NULL);
  thrd_join(thread, &clean);
  expect(clean == 1 && specdet_last_error()[0] != '\0', "last error is thread-local");

  specdet_image_destroy(one);
  specdet_image_destroy(good);
  specdet_image_destroy(NULL);
  specdet_detector_destroy(detector);
  detector = NULL; /* use after destroy is undefined: the caller clears its pointer */
  specdet_detector_destroy(detector);
  expect_status(specdet_detector_get_int(detector, "crop", &value), SPECDET_ERROR_INVALID_ARGUMENT,
                "a cleared (NULL) detector is refused");

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

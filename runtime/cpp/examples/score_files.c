/* A C11 program that uses only specdet.h: score image files with an artifact.
 *     specdet-example-c model.onnx photo.jpg other.png
 * prints "PATH PROBABILITY LABEL" per file; exit 1 if any file could not be scored. */
#include <stdio.h>

#include "specdet/specdet.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s ARTIFACT IMAGE...\n", argv[0]);
    return 2;
  }
  if (specdet_abi_version() / 1000 != SPECDET_ABI_VERSION / 1000 || specdet_abi_version() < SPECDET_ABI_VERSION) {
    fprintf(stderr, "libspecdet_runtime ABI %d does not serve this program (built for %d)\n", specdet_abi_version(),
            SPECDET_ABI_VERSION);
    return 2;
  }
  specdet_detector* detector = NULL;
  if (specdet_detector_create(argv[1], NULL, &detector) != SPECDET_OK) {
    fprintf(stderr, "error: %s\n", specdet_last_error());
    return 2;
  }
  int failures = 0;
  for (int i = 2; i < argc; ++i) {
    specdet_image* image = NULL;
    float probability = 0.0f;
    int32_t label = SPECDET_LABEL_NONE;
    int status = specdet_image_create_file(argv[i], &image);
    if (status == SPECDET_OK)
      status = specdet_detector_score(detector, (const specdet_image* const*)&image, 1, &probability, NULL, &label,
                                      NULL, 1);
    if (status == SPECDET_OK) {
      printf("%s %.6f %s\n", argv[i], probability, label == SPECDET_LABEL_FAKE ? "fake" : "real");
    } else {
      fprintf(stderr, "skipped %s: %s (%s)\n", argv[i], specdet_last_error(), specdet_status_name(status));
      ++failures;
    }
    specdet_image_destroy(image);
  }
  specdet_detector_destroy(detector);
  return failures ? 1 : 0;
}

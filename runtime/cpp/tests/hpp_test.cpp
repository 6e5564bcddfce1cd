// The C++17 wrapper: RAII, exceptions with the status, batch scores with per-image failures.
//     specdet-hpp-test ARTIFACT.onnx
#include <cstdio>
#include <vector>

#include "specdet/specdet.hpp"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  int failed = 0, passed = 0;
  auto expect = [&](bool ok, const char* what) {
    std::printf("%s - %s\n", ok ? "ok" : "not ok", what);
    (ok ? passed : failed)++;
  };
  try {
    specdet::Options options;
    options.set("intra_op_threads", 1).set("min_side", 1);
    try {
      options.set("colour", 3);
      expect(false, "unknown option throws");
    } catch (const specdet::Error& err) {
      expect(err.status() == SPECDET_ERROR_UNKNOWN_OPTION, "unknown option throws with its status");
    }
    const specdet::Detector detector(argv[1], options);
    expect(detector.get_string("backend") == "onnxruntime", "backend");
    expect(detector.get_string("manifest").find("specdet-manifest") != std::string::npos, "manifest text");
    std::vector<uint8_t> gray(30 * 20, 128);
    const std::vector<uint8_t> text = {'n', 'o', 'p', 'e'};
    std::vector<specdet::Image> images;
    images.push_back(specdet::Image::pixels(gray.data(), 30, 20, 30, SPECDET_PIXELS_GRAY8));
    images.push_back(specdet::Image::encoded(text));
    const auto scores = detector.score(specdet::View<const specdet::Image>(images));
    expect(scores.size() == 2 && scores[0].ok() && !scores[1].ok(), "batch with one unreadable image");
    expect(scores[1].status == SPECDET_ERROR_IMAGE && !scores[1].message.empty(), "its status and message");
    expect(scores[0].fake == (scores[0].probability >= detector.threshold()), "label rule");
    try {
      detector.score(images[1]);
      expect(false, "single unreadable image throws");
    } catch (const specdet::Error& err) {
      expect(err.status() == SPECDET_ERROR_IMAGE, "single unreadable image throws SPECDET_ERROR_IMAGE");
    }
    expect(detector.preprocess(images[0]).size() == static_cast<size_t>(detector.get_int("input_size")), "preprocess");
  } catch (const specdet::Error& err) {
    std::printf("not ok - unexpected error: %s\n", err.what());
    ++failed;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

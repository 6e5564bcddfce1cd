#include "preprocess.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace specdet {
namespace {

// resize_for_crop + _resize_shorter_side of preprocess.py.
Rgb resize_for_crop(const Rgb& image, const Preprocessing& spec) {
  const int shorter = std::min(image.width, image.height), longer = std::max(image.width, image.height);
  const int target = std::max(spec.resize ? spec.resize : shorter, spec.crop);
  if (shorter == target) return image;
  // torchvision truncates the longer side: int(size * long / short), a correctly rounded double.
  const int new_long = static_cast<int>(static_cast<double>(static_cast<int64_t>(target) * longer) / shorter);
  const bool portrait = image.width <= image.height;
  return resize(image, portrait ? target : new_long, portrait ? new_long : target, spec.filter);
}

// Python's round() of (size - crop) / 2: halves go to the even neighbour.
int centre_offset(int size, int crop) {
  return static_cast<int>(std::nearbyint((size - crop) / 2.0));
}

}  // namespace

void preprocess(const Rgb& image, const Preprocessing& spec, float* out) {
  static_assert(FLT_EVAL_METHOD == 0, "float arithmetic must round to float, as numpy's float32 does");
  const Rgb resized = resize_for_crop(image, spec);
  const int crop = spec.crop;
  const int left = centre_offset(resized.width, crop), top = centre_offset(resized.height, crop);
  const size_t plane = static_cast<size_t>(crop) * crop;
  for (int c = 0; c < 3; ++c) {
    // numpy: (pixels / 255.0 - mean) / std, every step in float32.
    const float mean = spec.mean[c], std = spec.std[c];
    for (int y = 0; y < crop; ++y) {
      const uint8_t* row = resized.row(top + y) + 3 * left + c;
      float* dst = out + c * plane + static_cast<size_t>(y) * crop;
      for (int x = 0; x < crop; ++x) dst[x] = (static_cast<float>(row[3 * x]) / 255.0f - mean) / std;
    }
  }
}

}  // namespace specdet

#include "preprocess.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace specdet {
namespace {

// resize_for_crop + _resize_shorter_side of preprocess.py.
Rgb resize_for_crop(const Rgb& image, const Preprocessing& spec) {
  const int shorter = std::min(image.width, image.height), longer = std::max(image.width, image.height);
  const int wanted = spec.resize ? spec.resize : shorter;
  const int target = spec.pad_small ? wanted : std::max(wanted, spec.crop);
  if (shorter == target) return image;
  // torchvision truncates the longer side: int(size * long / short), a correctly rounded double.
  const int new_long = static_cast<int>(static_cast<double>(static_cast<int64_t>(target) * longer) / shorter);
  const bool portrait = image.width <= image.height;
  return resize(image, portrait ? target : new_long, portrait ? new_long : target, spec.filter);
}

// Where the crop starts on an axis of `size` pixels. Python's round() of (size - crop) / 2 (halves go to the
// even neighbour); an axis shorter than the crop (pad_small only) starts (crop - size) / 2 before the image, the
// black padding of _pad_to in preprocess.py.
int centre_offset(int size, int crop) {
  if (size < crop) return -((crop - size) / 2);
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
    const float black = (0.0f / 255.0f - mean) / std;
    for (int y = 0; y < crop; ++y) {
      float* dst = out + c * plane + static_cast<size_t>(y) * crop;
      const int sy = top + y;
      if (sy < 0 || sy >= resized.height) {
        std::fill(dst, dst + crop, black);
        continue;
      }
      const uint8_t* row = resized.row(sy) + c;
      for (int x = 0; x < crop; ++x) {
        const int sx = left + x;
        dst[x] = sx < 0 || sx >= resized.width ? black : (static_cast<float>(row[3 * sx]) / 255.0f - mean) / std;
      }
    }
  }
}

}  // namespace specdet

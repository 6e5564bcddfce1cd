#include "preprocess.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace specdet {
namespace {

// resize_for_crop of preprocess.py, once check_resized has bounded the size (so it fits in an int).
Rgb resize_for_crop(const Rgb& image, const Preprocessing& spec, const ImageLimits& limits) {
  const auto [width, height] = resized_size(image.width, image.height, spec);
  check_resized(image.width, image.height, width, height, limits);
  if (width == image.width && height == image.height) return image;
  return resize(image, static_cast<int>(width), static_cast<int>(height), spec.filter);
}

// Where the crop starts on an axis of `size` pixels. Python's round() of (size - crop) / 2 (halves go to the
// even neighbour); an axis shorter than the crop (pad_small only) starts (crop - size) / 2 before the image, the
// black padding of _pad_to in preprocess.py.
int centre_offset(int size, int crop) {
  if (size < crop) return -((crop - size) / 2);
  return static_cast<int>(std::nearbyint((size - crop) / 2.0));
}

}  // namespace

std::pair<int64_t, int64_t> resized_size(int64_t width, int64_t height, const Preprocessing& spec) {
  const int64_t shorter = std::min(width, height), longer = std::max(width, height);
  const int64_t wanted = spec.resize ? spec.resize : shorter;
  // pad_small: never upscaled to the crop (the crop pads it instead, as torchvision's CenterCrop does).
  const int64_t target = spec.pad_small ? wanted : std::max<int64_t>(wanted, spec.crop);
  if (shorter == target) return {width, height};
  // A target no image may be resized to (a manifest's resize of 10^12): refused by check_resized
  // whatever the other side, which is then not computed (target * longer would overflow).
  if (target > limits::kMaxPixelsCeiling) return {target, target};
  // torchvision truncates the longer side: int(size * long / short), a correctly rounded double.
  // target is below 2^28 and longer below 2^31 (the decoders), so their product is exact in 64 bits.
  const auto new_long = static_cast<int64_t>(static_cast<double>(target * longer) / static_cast<double>(shorter));
  return width <= height ? std::pair{target, new_long} : std::pair{new_long, target};
}

void preprocess(const Rgb& image, const Preprocessing& spec, const ImageLimits& limits, float* out) {
  static_assert(FLT_EVAL_METHOD == 0, "float arithmetic must round to float, as numpy's float32 does");
  const Rgb resized = resize_for_crop(image, spec, limits);
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

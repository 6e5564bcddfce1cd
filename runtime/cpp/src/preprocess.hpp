// The preprocessing of specdet/runtime/preprocess.py: shorter side resized (torchvision's Resize(int)
// size rounding, Pillow's filter), centre crop (torchvision's rounding), scaled to [0, 1] and
// normalised in float32, channels first.
#pragma once

#include <array>
#include <cstdint>
#include <utility>

#include "image.hpp"
#include "resample.hpp"

namespace specdet {

struct Preprocessing {
  int64_t resize = 0;  // 0: keep the shorter side (the manifest's null); any size, as in Python
  int crop = 0;        // at most limits::kMaxInputSize
  std::array<float, 3> mean{}, std{};
  Filter filter = Filter::Bicubic;
  bool pad_small = false;  // pad an image smaller than the crop with black (torchvision's CenterCrop), never upscale
};

// The size an image of width x height is resized to before the crop (runtime/preprocess.py's
// resized_size), in 64 bits: a 1 x 80000000 strip scaled to a 224-pixel short side would not fit in 32.
std::pair<int64_t, int64_t> resized_size(int64_t width, int64_t height, const Preprocessing& spec);

// Write the [3, crop, crop] tensor of `image` into `out` (3 * crop * crop floats); an image whose
// resized size is above limits.max_pixels is refused (SPECDET_ERROR_IMAGE) before it is resized.
void preprocess(const Rgb& image, const Preprocessing& spec, const ImageLimits& limits, float* out);

}  // namespace specdet

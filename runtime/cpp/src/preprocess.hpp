// The preprocessing of specdet/runtime/preprocess.py: shorter side resized (torchvision's Resize(int)
// size rounding, Pillow's filter), centre crop (torchvision's rounding), scaled to [0, 1] and
// normalised in float32, channels first.
#pragma once

#include <array>

#include "image.hpp"
#include "resample.hpp"

namespace specdet {

struct Preprocessing {
  int resize = 0;  // 0: keep the shorter side (the manifest's null)
  int crop = 0;
  std::array<float, 3> mean{}, std{};
  Filter filter = Filter::Bicubic;
  bool pad_small = false;  // pad an image smaller than the crop with black (torchvision's CenterCrop), never upscale
};

// Write the [3, crop, crop] tensor of `image` into `out` (3 * crop * crop floats).
void preprocess(const Rgb& image, const Preprocessing& spec, float* out);

}  // namespace specdet

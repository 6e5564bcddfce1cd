// Pillow's resampling (libImaging/Resample.c), reimplemented so that resized pixels equal Pillow's:
// separable filter, horizontal pass then vertical, support widened by the downscale factor
// (antialiasing), coefficients in fixed point with 22 fractional bits, 8-bit clipped intermediate.
#pragma once

#include "image.hpp"

namespace specdet {

enum class Filter { Bilinear, Bicubic };

// `image` resized to width x height, as PIL.Image.resize((width, height), filter) on an RGB image.
Rgb resize(const Rgb& image, int width, int height, Filter filter);

}  // namespace specdet

// Decoded images and the conversions that bring every input to 8-bit RGB, as the Python runtime's
// load_image does (specdet/runtime/preprocess.py): alpha over white, grayscale replicated, 16-bit
// grayscale scaled, EXIF orientation applied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "limits.hpp"

namespace specdet {

// 8-bit RGB, rows packed (stride = 3 * width).
struct Rgb {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;

  uint8_t* row(int y) { return pixels.data() + static_cast<size_t>(y) * 3 * width; }
  const uint8_t* row(int y) const { return pixels.data() + static_cast<size_t>(y) * 3 * width; }
};

// Limits checked before any pixel buffer is allocated: those of the Python runtime by default.
struct ImageLimits {
  int64_t max_pixels = limits::kMaxPixels;
  int64_t min_side = 1;
};

// Refuse sizes outside the limits (SPECDET_ERROR_IMAGE), before decoding.
void check_size(int64_t width, int64_t height, const ImageLimits& limits);

// Refuse an image whose size once resized for the model is above max_pixels (a 3 x 30000 strip whose
// short side is scaled up to 224 is 500 megapixels), before resizing, as the Python runtime does.
void check_resized(int64_t width, int64_t height, int64_t resized_width, int64_t resized_height,
                   const ImageLimits& limits);

// One pixel of RGBA composited over opaque white with Pillow's Image.alpha_composite arithmetic.
void over_white(const uint8_t* rgba, uint8_t* rgb);

// Interleaved 8-bit pixels with 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels to RGB.
void to_rgb(const uint8_t* src, size_t stride, int channels, int width, int height, Rgb& out);

// EXIF orientation 2..8 applied as Pillow's ImageOps.exif_transpose does; other values keep the image.
Rgb oriented(Rgb image, int orientation);

// The orientation tag (0x0112) of a TIFF-structured EXIF block (starting at "II" or "MM"), or 1.
int exif_orientation(const uint8_t* tiff, size_t size);

// Decode JPEG or PNG bytes (told apart by their signature) to RGB, with EXIF orientation applied.
Rgb decode(const uint8_t* data, size_t size, const ImageLimits& limits);
Rgb decode_jpeg(const uint8_t* data, size_t size, const ImageLimits& limits);
Rgb decode_png(const uint8_t* data, size_t size, const ImageLimits& limits);

}  // namespace specdet

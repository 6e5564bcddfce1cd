#include "image.hpp"

#include <cstring>

#include "error.hpp"

namespace specdet {

void check_size(int64_t width, int64_t height, const ImageLimits& limits) {
  if (width <= 0 || height <= 0) fail(SPECDET_ERROR_IMAGE, "image has no pixels");
  if (width * height > limits.max_pixels)
    fail(SPECDET_ERROR_IMAGE, "image of " + std::to_string(width) + "x" + std::to_string(height) +
                                  " pixels exceeds the limit of " + std::to_string(limits.max_pixels) +
                                  " pixels (option max_pixels)");
  if (width < limits.min_side || height < limits.min_side)
    fail(SPECDET_ERROR_IMAGE, "image of " + std::to_string(width) + "x" + std::to_string(height) +
                                  " pixels is below the minimum side of " + std::to_string(limits.min_side) +
                                  " (option min_side)");
}

void check_resized(int64_t width, int64_t height, int64_t resized_width, int64_t resized_height,
                   const ImageLimits& limits) {
  // The sides first: then the product is of two numbers below 2^28, which cannot overflow.
  if (resized_width > limits.max_pixels || resized_height > limits.max_pixels ||
      resized_width * resized_height > limits.max_pixels)
    fail(SPECDET_ERROR_IMAGE, "image of " + std::to_string(width) + "x" + std::to_string(height) +
                                  " pixels, resized for the model to " + std::to_string(resized_width) + "x" +
                                  std::to_string(resized_height) + ", exceeds the limit of " +
                                  std::to_string(limits.max_pixels) + " pixels (option max_pixels)");
}

// Pillow's AlphaComposite.c with a white, opaque destination: integer arithmetic with 7 extra bits
// and rounded divisions by 255, so composited pixels equal Pillow's to the last bit.
void over_white(const uint8_t* rgba, uint8_t* rgb) {
  const uint32_t a = rgba[3];
  if (a == 0) {
    rgb[0] = rgb[1] = rgb[2] = 255;
    return;
  }
  constexpr uint32_t kBits = 7;
  const uint32_t blend = 255 * (255 - a);
  const uint32_t outa255 = a * 255 + blend;
  const uint32_t coef1 = a * 255 * 255 * (1u << kBits) / outa255;
  const uint32_t coef2 = 255 * (1u << kBits) - coef1;
  for (int c = 0; c < 3; ++c) {
    const uint32_t tmp = rgba[c] * coef1 + 255 * coef2 + (0x80u << kBits);
    rgb[c] = static_cast<uint8_t>((((tmp >> 8) + tmp) >> 8) >> kBits);
  }
}

void to_rgb(const uint8_t* src, size_t stride, int channels, int width, int height, Rgb& out) {
  out.width = width;
  out.height = height;
  out.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    const uint8_t* s = src + static_cast<size_t>(y) * stride;
    uint8_t* d = out.row(y);
    switch (channels) {
      case 1:
        for (int x = 0; x < width; ++x) d[3 * x] = d[3 * x + 1] = d[3 * x + 2] = s[x];
        break;
      case 2:
        for (int x = 0; x < width; ++x) {
          const uint8_t rgba[4] = {s[2 * x], s[2 * x], s[2 * x], s[2 * x + 1]};
          over_white(rgba, d + 3 * x);
        }
        break;
      case 3:
        std::memcpy(d, s, static_cast<size_t>(width) * 3);
        break;
      case 4:
        for (int x = 0; x < width; ++x) over_white(s + 4 * x, d + 3 * x);
        break;
      default:
        fail(SPECDET_ERROR_INTERNAL, "to_rgb: " + std::to_string(channels) + " channels");
    }
  }
}

Rgb oriented(Rgb image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  // Pillow's transpose for each orientation: 2 mirror, 3 rotate 180, 4 flip, 5 transpose,
  // 6 rotate 270 (90 clockwise), 7 transverse, 8 rotate 90 (counter-clockwise).
  const bool swap = orientation >= 5;
  const int w = image.width, h = image.height;
  Rgb out;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.pixels.resize(image.pixels.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;  // source pixel of output (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; break;
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;
        case 4: sy = h - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = h - 1 - x; break;
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;
        case 8: sx = w - 1 - y; sy = x; break;
      }
      std::memcpy(out.row(y) + 3 * x, image.row(sy) + 3 * sx, 3);
    }
  }
  return out;
}

int exif_orientation(const uint8_t* tiff, size_t size) {
  if (size < 8) return 1;
  const bool little = tiff[0] == 'I' && tiff[1] == 'I';
  if (!little && !(tiff[0] == 'M' && tiff[1] == 'M')) return 1;
  auto u16 = [&](size_t at) -> uint32_t {
    return little ? tiff[at] | tiff[at + 1] << 8 : tiff[at] << 8 | tiff[at + 1];
  };
  auto u32 = [&](size_t at) -> uint32_t {
    return little ? u16(at) | u16(at + 2) << 16 : u16(at) << 16 | u16(at + 2);
  };
  const size_t ifd = u32(4);
  if (ifd > size - 2) return 1;
  const size_t entries = u16(ifd);
  for (size_t i = 0; i < entries; ++i) {
    const size_t at = ifd + 2 + 12 * i;
    if (at > size - 12) break;
    if (u16(at) == 0x0112 && u16(at + 2) == 3 /* SHORT */) return static_cast<int>(u16(at + 8));
  }
  return 1;
}

Rgb decode(const uint8_t* data, size_t size, const ImageLimits& limits) {
  if (size == 0) fail(SPECDET_ERROR_IMAGE, "empty input (0 bytes)");
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return decode_jpeg(data, size, limits);
  if (size >= 8 && std::memcmp(data, kPng, 8) == 0) return decode_png(data, size, limits);
  const char* known = nullptr;
  if (size >= 4 && std::memcmp(data, "GIF8", 4) == 0) known = "GIF";
  else if (size >= 2 && std::memcmp(data, "BM", 2) == 0) known = "BMP";
  else if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) known = "WebP";
  else if (size >= 4 && (std::memcmp(data, "II*\0", 4) == 0 || std::memcmp(data, "MM\0*", 4) == 0)) known = "TIFF";
  if (known) fail(SPECDET_ERROR_IMAGE, std::string(known) + " images are not supported: the C++ runtime reads JPEG and PNG");
  fail(SPECDET_ERROR_IMAGE, "not a JPEG or PNG image (unrecognised signature)");
}

}  // namespace specdet

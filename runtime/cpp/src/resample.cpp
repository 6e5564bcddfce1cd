#include "resample.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace specdet {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Keys' cubic with a = -0.5, written with Pillow's operation order so that doubles round alike.
double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// For each output index: the first input index, the number of taps and the fixed-point weights.
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out_size * ksize]
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the box [0, in_size).
Coefficients coefficients(int in_size, int out_size, Filter filter) {
  double (*kernel)(double) = filter == Filter::Bicubic ? bicubic : bilinear;
  const double kernel_support = filter == Filter::Bicubic ? 2.0 : 1.0;
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = kernel_support * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = 0.0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = kernel((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
      const double v = k[x] * (1 << kPrecisionBits);
      c.weights[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int32_t>(k[x] < 0 ? -0.5 + v : 0.5 + v);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// Rows [row0, row0 + out.height) of `in` resampled horizontally into `out`.
void horizontal(const Rgb& in, int row0, const Coefficients& c, Rgb& out) {
  for (int y = 0; y < out.height; ++y) {
    const uint8_t* src = in.row(row0 + y);
    uint8_t* dst = out.row(y);
    for (int x = 0; x < out.width; ++x) {
      const int32_t* k = &c.weights[static_cast<size_t>(x) * c.ksize];
      const uint8_t* p = src + 3 * c.first[x];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int i = 0; i < c.count[x]; ++i) {
        s0 += p[3 * i] * k[i];
        s1 += p[3 * i + 1] * k[i];
        s2 += p[3 * i + 2] * k[i];
      }
      dst[3 * x] = clip8(s0);
      dst[3 * x + 1] = clip8(s1);
      dst[3 * x + 2] = clip8(s2);
    }
  }
}

// `in` resampled vertically into `out`; c.first is relative to in's first row minus `offset`.
void vertical(const Rgb& in, int offset, const Coefficients& c, Rgb& out) {
  const size_t stride = static_cast<size_t>(in.width) * 3;
  for (int y = 0; y < out.height; ++y) {
    const int32_t* k = &c.weights[static_cast<size_t>(y) * c.ksize];
    const uint8_t* base = in.row(c.first[y] - offset);
    uint8_t* dst = out.row(y);
    for (size_t x = 0; x < stride; ++x) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int i = 0; i < c.count[y]; ++i) s += base[i * stride + x] * k[i];
      dst[x] = clip8(s);
    }
  }
}

Rgb blank(int width, int height) {
  Rgb image;
  image.width = width;
  image.height = height;
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  return image;
}

}  // namespace

Rgb resize(const Rgb& image, int width, int height, Filter filter) {
  if (width == image.width && height == image.height) return image;
  const Coefficients ch = coefficients(image.width, width, filter);
  const Coefficients cv = coefficients(image.height, height, filter);
  // Pillow 13 resizes vertically first when the height shrinks by more than twice as many pixels as the
  // width; the passes round to uint8 between them, so the order changes bytes (runtime/resample.py too).
  const int shrink = image.height - height;
  if (shrink > 0 && shrink > (image.width - width) * 2) {
    Rgb temp = blank(image.width, height);
    vertical(image, 0, cv, temp);
    if (width == image.width) return temp;
    Rgb out = blank(width, height);
    horizontal(temp, 0, ch, out);
    return out;
  }
  // As Pillow: the horizontal pass only covers the rows the vertical pass reads.
  const int first_row = cv.first[0];
  const int last_row = cv.first[height - 1] + cv.count[height - 1];
  const Rgb* current = &image;
  Rgb temp;
  int offset = 0;
  if (width != image.width) {
    temp = blank(width, last_row - first_row);
    horizontal(image, first_row, ch, temp);
    current = &temp;
    offset = first_row;
  }
  if (height == image.height) return *current;
  Rgb out = blank(width, height);
  vertical(*current, offset, cv, out);
  return out;
}

}  // namespace specdet

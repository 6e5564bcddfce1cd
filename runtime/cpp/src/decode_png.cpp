// PNG through libpng, brought to the same 8-bit RGB as Pillow + preprocess.py's _to_rgb:
//  - palette: looked up; its tRNS alphas (if any) composited over white;
//  - 1/2/4-bit gray: scaled to 0..255 (Pillow's "1", "L;2", "L;4" unpacking does the same);
//  - 16-bit gray ("I;16" in Pillow): round(v * 255 / 65535), as _to_rgb scales wide modes;
//  - other 16-bit images: the high byte (Pillow's "RGB;16B", "RGBA;16B", "LA;16B" raw modes);
//  - gray/RGB tRNS colour keys are ignored (Pillow's convert("RGB") drops them too);
//  - gamma, sBIT and colour profiles are ignored, as Pillow does;
//  - an eXIf chunk's orientation is applied (before or after the image data).
#include <csetjmp>
#include <cmath>
#include <cstring>

#include <png.h>

#include "error.hpp"
#include "image.hpp"

namespace specdet {
namespace {

struct Reader {
  const uint8_t* data;
  size_t size;
  size_t at;
  char message[256];
};

void on_read(png_structp png, png_bytep out, png_size_t length) {
  auto* reader = static_cast<Reader*>(png_get_io_ptr(png));
  if (length > reader->size - reader->at) png_error(png, "truncated PNG (premature end of data)");
  std::memcpy(out, reader->data + reader->at, length);
  reader->at += length;
}

void on_error(png_structp png, png_const_charp message) {
  auto* reader = static_cast<Reader*>(png_get_io_ptr(png));
  std::snprintf(reader->message, sizeof reader->message, "%s", message);
  png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}  // benign (unknown chunks, bad CRC in ancillary chunks)

int orientation_of(png_structp png, png_infop info) {
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 length = 0;
  png_bytep exif = nullptr;
  if (info && png_get_eXIf_1(png, info, &length, &exif) && exif) return exif_orientation(exif, length);
#endif
  return 1;
}

void to_8bit(const std::vector<uint8_t>& wide, std::vector<uint8_t>& narrow, int channels) {
  const size_t samples = wide.size() / 2;
  narrow.resize(samples);
  for (size_t i = 0; i < samples; ++i) {
    const unsigned v = wide[2 * i] << 8 | wide[2 * i + 1];
    narrow[i] = channels == 1 ? static_cast<uint8_t>(std::lround(v * (255.0 / 65535.0))) : wide[2 * i];
  }
}

}  // namespace

Rgb decode_png(const uint8_t* data, size_t size, const ImageLimits& limits) {
  Reader reader{data, size, 0, {0}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, on_error, on_warning);
  if (!png) fail(SPECDET_ERROR_OUT_OF_MEMORY, "libpng could not allocate a reader");
  png_infop info = png_create_info_struct(png);
  png_infop end = png_create_info_struct(png);
  // Declared before setjmp so that a longjmp back here leaves them intact; freed by unwinding.
  std::vector<uint8_t> pixels, narrow;
  std::vector<png_bytep> rows;
  Rgb out;
  int status = SPECDET_OK;
  std::string reason;
  if (!info || !end) {
    png_destroy_read_struct(&png, &info, &end);
    fail(SPECDET_ERROR_OUT_OF_MEMORY, "libpng could not allocate image info");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, &end);
    fail(SPECDET_ERROR_IMAGE, std::string("corrupt PNG (") + reader.message + ")");
  }
  png_set_read_fn(png, &reader, on_read);
  // Pillow checks no CRCs of ancillary chunks; libpng's default of failing on them would refuse
  // files that Python scores.
  png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_QUIET_USE);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);  // our own pixel limit applies below
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  try {
    check_size(width, height, limits);
  } catch (const Error& err) {
    status = err.status();
    reason = err.what();
  }
  if (status == SPECDET_OK) {
    if (color == PNG_COLOR_TYPE_PALETTE) {
      png_set_palette_to_rgb(png);
      if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    }
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const int channels = png_get_channels(png, info);
    const size_t stride = png_get_rowbytes(png, info);
    pixels.resize(stride * height);
    rows.resize(height);
    for (png_uint_32 y = 0; y < height; ++y) rows[y] = pixels.data() + y * stride;
    png_read_image(png, rows.data());
    png_read_end(png, end);
    const uint8_t* samples = pixels.data();
    size_t row_bytes = stride;
    if (png_get_bit_depth(png, info) == 16) {
      to_8bit(pixels, narrow, channels);
      samples = narrow.data();
      row_bytes = stride / 2;
    }
    to_rgb(samples, row_bytes, channels, static_cast<int>(width), static_cast<int>(height), out);
  }
  int orientation = 1;
  if (status == SPECDET_OK) {
    orientation = orientation_of(png, info);
    if (orientation == 1) orientation = orientation_of(png, end);
  }
  png_destroy_read_struct(&png, &info, &end);
  if (status != SPECDET_OK) fail(status, reason);
  return oriented(std::move(out), orientation);
}

}  // namespace specdet

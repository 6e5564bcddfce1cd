// JPEG through libjpeg(-turbo), configured as Pillow decodes: the default (islow) IDCT and fancy
// upsampling, CMYK read with Adobe's inverted polarity and converted with Pillow's formula, and a
// truncated stream is an error (Pillow refuses it unless LOAD_TRUNCATED_IMAGES is set).
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include <jerror.h>
#include <jpeglib.h>

#include "error.hpp"
#include "image.hpp"

namespace specdet {
namespace {

struct ErrorManager {
  jpeg_error_mgr base;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
};

void on_error(j_common_ptr info) {
  auto* errors = reinterpret_cast<ErrorManager*>(info->err);
  info->err->format_message(info, errors->message);
  std::longjmp(errors->jump, 1);
}

// libjpeg only warns about a premature end of data and fills the rest with gray; Pillow fails.
void on_message(j_common_ptr info, int level) {
  auto* errors = reinterpret_cast<ErrorManager*>(info->err);
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) errors->truncated = true;
}

// Pillow's cmyk2rgb on Adobe-inverted CMYK: MULDIV255 with rounding.
void cmyk_to_rgb(const uint8_t* cmyk, uint8_t* rgb, int width) {
  for (int x = 0; x < width; ++x) {
    const int nk = cmyk[4 * x + 3];  // 255 - K once inverted, so the raw sample itself
    for (int c = 0; c < 3; ++c) {
      const int inverted = 255 - cmyk[4 * x + c];
      const int tmp = inverted * nk + 128;
      const int v = nk - (((tmp >> 8) + tmp) >> 8);
      rgb[3 * x + c] = static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
    }
  }
}

int orientation_of(j_decompress_ptr info) {
  for (jpeg_saved_marker_ptr m = info->marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0)
      return exif_orientation(m->data + 6, m->data_length - 6);
  }
  return 1;
}

}  // namespace

Rgb decode_jpeg(const uint8_t* data, size_t size, const ImageLimits& limits) {
  jpeg_decompress_struct info;
  ErrorManager errors;
  info.err = jpeg_std_error(&errors.base);
  errors.base.error_exit = on_error;
  errors.base.emit_message = on_message;
  errors.truncated = false;
  // Everything the jump may skip lives outside this frame's automatic C++ objects: the buffers are
  // declared before setjmp and freed after, whichever way the decode ends.
  std::vector<uint8_t> scanline;
  Rgb out;
  int status = SPECDET_OK;
  int orientation = 1;
  std::string reason;
  jpeg_create_decompress(&info);
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&info);
    fail(SPECDET_ERROR_IMAGE, std::string("corrupt JPEG (") + errors.message + ")");
  }
  jpeg_mem_src(&info, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&info, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&info, TRUE);
  // Saved markers live in libjpeg's image pool, which jpeg_finish_decompress frees: read them now.
  orientation = orientation_of(&info);
  const bool cmyk = info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK;
  const bool gray = info.jpeg_color_space == JCS_GRAYSCALE;
  info.out_color_space = cmyk ? JCS_CMYK : gray ? JCS_GRAYSCALE : JCS_RGB;
  try {
    check_size(info.image_width, info.image_height, limits);
  } catch (const Error& err) {
    status = err.status();
    reason = err.what();
  }
  if (status == SPECDET_OK) {
    jpeg_start_decompress(&info);
    const int width = static_cast<int>(info.output_width), channels = info.output_components;
    out.width = width;
    out.height = static_cast<int>(info.output_height);
    out.pixels.resize(static_cast<size_t>(out.width) * out.height * 3);
    scanline.resize(static_cast<size_t>(width) * channels);
    while (info.output_scanline < info.output_height) {
      const int y = static_cast<int>(info.output_scanline);
      JSAMPROW row = scanline.data();
      jpeg_read_scanlines(&info, &row, 1);
      uint8_t* dst = out.row(y);
      if (channels == 4) {
        cmyk_to_rgb(scanline.data(), dst, width);
      } else if (channels == 1) {
        for (int x = 0; x < width; ++x) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = scanline[x];
      } else {
        std::memcpy(dst, scanline.data(), scanline.size());
      }
    }
    jpeg_finish_decompress(&info);
  }
  jpeg_destroy_decompress(&info);
  if (status != SPECDET_OK) fail(status, reason);
  if (errors.truncated) fail(SPECDET_ERROR_IMAGE, "truncated JPEG (premature end of data)");
  return oriented(std::move(out), orientation);
}

}  // namespace specdet

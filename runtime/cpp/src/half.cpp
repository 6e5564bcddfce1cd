#include <cstring>

#include "backend.hpp"

namespace specdet {

uint16_t float_to_half(float value) {
  uint32_t f;
  std::memcpy(&f, &value, 4);
  const uint32_t sign = (f >> 16) & 0x8000u;
  f &= 0x7fffffffu;
  if (f >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (f > 0x7f800000u ? 0x200u : 0u));
  if (f >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to infinity
  if (f < 0x38800000u) {  // subnormal half (or zero): shift the mantissa with round-to-even
    if (f < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t exponent = f >> 23, mantissa = (f & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exponent;  // 14..24
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1), midpoint = 1u << (shift - 1);
    if (rest > midpoint || (rest == midpoint && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = ((f >> 13) - (112u << 10));
  const uint32_t rest = f & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ffu;
  uint32_t f;
  if (exponent == 0x1f) {
    f = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent == 0) {
    if (mantissa == 0) {
      f = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = mantissa;
      do { ++e; m <<= 1; } while (!(m & 0x400u));
      f = sign | ((112u - e) << 23) | ((m & 0x3ffu) << 13);
    }
  } else {
    f = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

}  // namespace specdet

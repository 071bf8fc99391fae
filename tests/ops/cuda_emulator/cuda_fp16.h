// Host emulation of __half (see cuda_runtime.h here): IEEE binary16 storage and its exact
// conversions to float (round to nearest even), in plain integer arithmetic so that any C++17
// compiler builds it.
#pragma once

#include <cstdint>
#include <cstring>

struct __half {
  uint16_t x;
};

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000u) << 16;
  const uint32_t exp = (h.x >> 10) & 0x1fu, man = h.x & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {  // inf / NaN
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {  // normal
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {  // zero
    bits = sign;
  } else {  // subnormal: man * 2^-24, exact in float
    const float v = static_cast<float>(man) * (1.0f / 16777216.0f);
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __half __float2half_rn(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  __half h;
  if (abs > 0x7f800000u) {  // NaN
    h.x = sign | 0x7e00u;
  } else if (abs >= 0x477ff000u) {  // rounds to >= 65520: inf
    h.x = sign | 0x7c00u;
  } else if (abs >= 0x38800000u) {  // normal half (>= 2^-14)
    const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    h.x = sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
  } else {  // subnormal half or zero: round abs * 2^24 to an integer, ties to even
    float a;
    std::memcpy(&a, &abs, 4);
    const float scaled = a * 16777216.0f;  // exact (power of two)
    uint32_t q = static_cast<uint32_t>(scaled);
    const float rest = scaled - static_cast<float>(q);
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) ++q;
    h.x = sign | static_cast<uint16_t>(q);
  }
  return h;
}

// Element types and conversions shared by the CPU (csrc/) and CUDA (kernels/) kernels:
// float16 and bfloat16 through their bit patterns, round to nearest even (as PyTorch does), so
// both backends round identically and nothing depends on _Float16 or cuda_fp16.h.
#pragma once

#include <stdint.h>
#include <string.h>

#include "philox.h"  // MF_HD

namespace mollify_fast {

struct Half { uint16_t bits; };
struct BF16 { uint16_t bits; };

MF_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

MF_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

MF_HD float half_to_float(uint16_t h) {
  uint32_t o = static_cast<uint32_t>(h & 0x7fff) << 13;
  const uint32_t exp = o & (0x7c00u << 13);
  o += (127 - 15) << 23;
  if (exp == (0x7c00u << 13)) {
    o += (128 - 16) << 23;  // inf / nan
  } else if (exp == 0) {
    o += 1 << 23;  // zero / subnormal: renormalise
    o = float_to_bits(bits_to_float(o) - bits_to_float(113u << 23));
  }
  return bits_to_float(o | (static_cast<uint32_t>(h & 0x8000) << 16));
}

MF_HD uint16_t float_to_half(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t o;
  if (u >= (127u + 16) << 23) {
    o = u > (255u << 23) ? 0x7e00 : 0x7c00;  // nan, or overflow to inf
  } else if (u < (113u << 23)) {
    // Subnormal half: a magic addend aligns the 10 mantissa bits (FP add rounds to even).
    const float magic = bits_to_float(((127 - 15) + (23 - 10) + 1) << 23);
    o = static_cast<uint16_t>(float_to_bits(bits_to_float(u) + magic) - float_to_bits(magic));
  } else {
    const uint32_t mant_odd = (u >> 13) & 1;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfff + mant_odd;
    o = static_cast<uint16_t>(u >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

MF_HD float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

MF_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet nan
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

// Load as / store from the compute type `acc` (double for double, float otherwise).
template <typename T> struct Io;
template <> struct Io<float> {
  using acc = float;
  MF_HD static float load(const float* p) { return *p; }
  MF_HD static void store(float* p, float v) { *p = v; }
};
template <> struct Io<double> {
  using acc = double;
  MF_HD static double load(const double* p) { return *p; }
  MF_HD static void store(double* p, double v) { *p = v; }
};
template <> struct Io<Half> {
  using acc = float;
  MF_HD static float load(const Half* p) { return half_to_float(p->bits); }
  MF_HD static void store(Half* p, float v) { p->bits = float_to_half(v); }
};
template <> struct Io<BF16> {
  using acc = float;
  MF_HD static float load(const BF16* p) { return bf16_to_float(p->bits); }
  MF_HD static void store(BF16* p, float v) { p->bits = float_to_bf16(v); }
};

// A per-sample parameter (pointer to one value per sample, in the compute type) or a scalar.
template <typename A>
MF_HD A param(const void* p, double scalar, int64_t n) {
  return p ? static_cast<const A*>(p)[n] : static_cast<A>(scalar);
}

}  // namespace mollify_fast

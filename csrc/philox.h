// Philox4x32-10 and the contract's uniform and Box-Muller mapping (CONTRACT section 3),
// shared by the CPU kernels (csrc/) and the CUDA kernels (kernels/).
//
// Stream (seed, offset): counter group j is encrypted with
//   counter = ((offset + j) mod 2^32, (offset + j) >> 32, 0, 0),  key = (seed mod 2^32, seed >> 32)
// and its four words give the normals of logical elements 4j .. 4j+3. This is bit-for-bit
// Triton's tl.randn4x(seed, offset + j), up to the last ulp of logf/sinf/cosf.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define MF_HD __host__ __device__ __forceinline__
#else
#define MF_HD inline
#endif

namespace mollify_fast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
// Largest float with (2^31 - 1) * scale < 1 after rounding: uniforms land in [0, 1).
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;

MF_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Ten rounds on (c0..c3) with key (k0, k1), in place.
MF_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = mulhi32(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// A 32-bit word to a uniform in [0, 1): as int32, ~i where negative, times the scale.
MF_HD float word_to_uniform(uint32_t w) {
  const int32_t i = static_cast<int32_t>(w);
  // i ^ (i >> 31) is ~i for negative i and i otherwise (branch-free, so loops vectorise).
  return static_cast<float>(i ^ (i >> 31)) * kUniformScale;
}

// The four normals of counter group `group` (= offset + j, modulo 2^64) for `seed`.
MF_HD void normals4(uint64_t seed, uint64_t group, float out[4]) {
  uint32_t c0 = static_cast<uint32_t>(group), c1 = static_cast<uint32_t>(group >> 32), c2 = 0, c3 = 0;
  philox4x32_10(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const float u0 = word_to_uniform(c0), u1 = word_to_uniform(c1);
  const float u2 = word_to_uniform(c2), u3 = word_to_uniform(c3);
  const float r0 = sqrtf(-2.0f * logf(u0 > kMinUniform ? u0 : kMinUniform));
  const float r1 = sqrtf(-2.0f * logf(u2 > kMinUniform ? u2 : kMinUniform));
  const float t0 = kTwoPi * u1, t1 = kTwoPi * u3;
  out[0] = r0 * cosf(t0);
  out[1] = r0 * sinf(t0);
  out[2] = r1 * cosf(t1);
  out[3] = r1 * sinf(t1);
}

// Mirror index i into [0, n) without repeating the edge (-1 -> 1, n -> n-2), for any distance.
MF_HD int64_t reflect_index(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i >= n ? period - i : i;
}

}  // namespace mollify_fast

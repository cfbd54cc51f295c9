// Vectorised Philox4x32-10 + Box-Muller for the CPU kernels.
//
// Philox: AVX2 or AVX-512 intrinsics, two vectors of groups in flight (below). Box-Muller: a
// loop gcc vectorises (8 or 16 lanes) with no calls inside: log and sin/cos from inline minimax
// polynomials (Cephes' logf/sinf/cosf coefficients, ~1 ulp on the ranges used) and branch-free
// selects. Built with -fno-math-errno so sqrtf is one instruction. Measured on the 2-core AMD
// EPYC dev machine, one thread, normals into an L1-resident buffer: glibc's vector
// logf/sinf/cosf (libmvec, via -ffast-math) and gcc's own Philox vectorisation gave 2.9 ns per
// normal; this file (AVX2 then) gives 1.6.
//
// sin and cos of th = 2 pi u take their quadrant from 4u exactly (u is in [0, 1)), so no
// Cody-Waite reduction is needed. Triton computes cos(fl(2 pi u)); the two differ by the
// rounding of fl(2 pi u), at most ~1e-6 absolute on a normal: inside the contract's
// 2e-5 * (1 + |v|).
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "dtypes.h"
#include "philox.h"

namespace mollify_fast {
MF_ISA_BEGIN  // compiled once per instruction set (csrc/cpu_dispatch.cpp)

namespace {
constexpr int kLanes = 64;  // groups per block: fits the 8 lane arrays in L1, long enough to vectorise


// max(u, 1e-7) for u >= 0. Non-negative floats order like their bit patterns, so an unsigned
// integer max does it: gcc if-converts neither fmaxf (NaN rules) nor a float ?: here.
inline float clamp_min_uniform(float u) {
  const uint32_t a = float_to_bits(u), b = float_to_bits(kMinUniform);
  return bits_to_float(a > b ? a : b);
}

// Natural log of a positive normal float (Cephes logf): x = 2^e m, m in [sqrt(1/2), sqrt(2)).
inline float log_poly(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t e = static_cast<int32_t>(bits >> 23) - 126;
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  // Branch-free selects (bit masks), so gcc if-converts and vectorises the caller's loop.
  const uint32_t small = 0u - static_cast<uint32_t>(m < 0.707106781186547524f);
  e += static_cast<int32_t>(small);  // -1 where small
  m = bits_to_float((float_to_bits(m + m - 1.0f) & small) | (float_to_bits(m - 1.0f) & ~small));
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return m + y + 0.693359375f * fe;
}

// sin or cos of 2 pi u for u in [0, 1): quadrant q = round(4u), a = (4u - q) pi/2 in [-pi/4, pi/4].
// One function for both (cos(2 pi u) = sin(2 pi u + pi/2): quadrant q + 1), returned by value:
// results passed out by reference made gcc pack the pair into a complex float and give up
// vectorising.
inline float sin_2pi_quadrant(float u, int32_t shift) {
  const float v = 4.0f * u;
  // v + 0.5 > 0, so truncation is floor (floorf itself does not vectorise without fast-math).
  const int32_t q0 = static_cast<int32_t>(v + 0.5f);
  const float qf = static_cast<float>(q0);
  const int32_t q = q0 + shift;
  const float a = (v - qf) * 1.57079632679489662f;
  const float z = a * a;
  const float sa = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * a + a;
  const float ca = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z
                   - 0.5f * z + 1.0f;
  // sin(q pi/2 + a): q = 0: sin a, 1: cos a, 2: -sin a, 3: -cos a (bit-mask selects).
  const uint32_t swap = 0u - static_cast<uint32_t>(q & 1);
  return bits_to_float(((float_to_bits(ca) & swap) | (float_to_bits(sa) & ~swap)) ^ (static_cast<uint32_t>(q & 2) << 30));
}
#if defined(__AVX2__)
// One vector width of the Philox rounds below: 8 lanes (AVX2) or 16 (AVX-512), the same steps.
struct Avx2 {
  using V = __m256i;
  static constexpr int kWidth = 8;
  static V load(const uint32_t* p) { return _mm256_load_si256(reinterpret_cast<const V*>(p)); }
  static void store(uint32_t* p, V v) { _mm256_store_si256(reinterpret_cast<V*>(p), v); }
  static V set1(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static V zero() { return _mm256_setzero_si256(); }
  static V xor3(V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  // (hi, lo) of the 32x32-bit products of the lanes with a constant: vpmuludq multiplies the
  // even lanes, so the odd ones are shifted down, multiplied, and the halves blended back.
  static void mulhilo(V a, V m, V& hi, V& lo) {
    const V ev = _mm256_mul_epu32(a, m);
    const V od = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(ev, 32), od, 0xAA);
    lo = _mm256_blend_epi32(ev, _mm256_slli_epi64(od, 32), 0xAA);
  }
};
#endif
#if defined(__AVX512F__)
struct Avx512 {
  using V = __m512i;
  static constexpr int kWidth = 16;
  static V load(const uint32_t* p) { return _mm512_load_si512(p); }
  static void store(uint32_t* p, V v) { _mm512_store_si512(p, v); }
  static V set1(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  static V zero() { return _mm512_setzero_si512(); }
  static V xor3(V a, V b, V c) { return _mm512_xor_si512(_mm512_xor_si512(a, b), c); }
  static void mulhilo(V a, V m, V& hi, V& lo) {  // as Avx2's, the odd lanes by mask
    const V ev = _mm512_mul_epu32(a, m);
    const V od = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(ev, 32), od);
    lo = _mm512_mask_blend_epi32(0xAAAA, ev, _mm512_slli_epi64(od, 32));
  }
};
#endif

#if defined(__AVX2__)
template <typename S>
struct Lanes {
  typename S::V c0, c1, c2, c3;
};

template <typename S>
inline void philox_round(Lanes<S>& s, typename S::V k0, typename S::V k1, typename S::V m0, typename S::V m1) {
  typename S::V hi0, lo0, hi1, lo1;
  S::mulhilo(s.c0, m0, hi0, lo0);
  S::mulhilo(s.c2, m1, hi1, lo1);
  s.c0 = S::xor3(hi1, s.c1, k0);
  s.c2 = S::xor3(hi0, s.c3, k1);
  s.c1 = lo1;
  s.c3 = lo0;
}

// Philox4x32-10 of lanes [i, i + 2 * S::kWidth): all 10 rounds in registers, two sets
// interleaved so one set's multiplies overlap the other's latency.
template <typename S>
inline void philox_two_sets(uint32_t key0, uint32_t key1, int i, uint32_t* c0, uint32_t* c1, uint32_t* c2,
                            uint32_t* c3) {
  constexpr int w = S::kWidth;
  const typename S::V m0 = S::set1(kPhiloxM0), m1 = S::set1(kPhiloxM1);
  Lanes<S> a{S::load(c0 + i), S::load(c1 + i), S::zero(), S::zero()};
  Lanes<S> b{S::load(c0 + i + w), S::load(c1 + i + w), S::zero(), S::zero()};
  uint32_t k0 = key0, k1 = key1;
  for (int round = 0; round < 10; ++round) {
    const typename S::V vk0 = S::set1(k0), vk1 = S::set1(k1);
    philox_round<S>(a, vk0, vk1, m0, m1);
    philox_round<S>(b, vk0, vk1, m0, m1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  const Lanes<S>* sets[2] = {&a, &b};
  for (int h = 0; h < 2; ++h) {
    S::store(c0 + i + w * h, sets[h]->c0);
    S::store(c1 + i + w * h, sets[h]->c1);
    S::store(c2 + i + w * h, sets[h]->c2);
    S::store(c3 + i + w * h, sets[h]->c3);
  }
}
#endif

// Philox4x32-10 of the counter groups g0 .. g0 + lanes - 1 (lanes a multiple of 16, at most
// kLanes) into lane arrays (64-byte aligned, kLanes long; lanes past `lanes` up to the next
// whole step are computed too, from their own counters).
//
// AVX2 / AVX-512: philox_two_sets. Measured on the 2-core AMD EPYC dev machine (AVX2): gcc's
// own vectorisation of the plain loop below shuffled between every round (8.4 ns per group);
// two 8-lane sets take about 1.6 ns per group where one set took 3.3. On the Intel Xeon dev
// VM (AVX-512), where the Philox rounds were half of a normals call's samples (perf), 16-lane
// sets took a one-thread mollify call of 196,608 elements from 308 to 252 us (same bits).
inline void philox_lanes(uint32_t key0, uint32_t key1, uint64_t g0, int lanes, uint32_t* c0, uint32_t* c1,
                         uint32_t* c2, uint32_t* c3) {
#if defined(__AVX512F__)
  using S = Avx512;
#elif defined(__AVX2__)
  using S = Avx2;
#endif
#if defined(__AVX2__)
  constexpr int step = 2 * S::kWidth;
  static_assert(kLanes % step == 0, "whole steps fill the lane arrays");
  lanes = (lanes + step - 1) / step * step;
#endif
  for (int i = 0; i < lanes; ++i) {
    const uint64_t g = g0 + static_cast<uint64_t>(i);
    c0[i] = static_cast<uint32_t>(g);
    c1[i] = static_cast<uint32_t>(g >> 32);
  }
#if defined(__AVX2__)
  for (int i = 0; i < lanes; i += step) philox_two_sets<S>(key0, key1, i, c0, c1, c2, c3);
#else
  for (int i = 0; i < lanes; ++i) {
    c2[i] = 0;
    c3[i] = 0;
    philox4x32_10(c0[i], c1[i], c2[i], c3[i], key0, key1);
  }
#endif
}
}  // namespace

void normals_cpu(uint64_t seed, uint64_t group0, int64_t ngroups, float* out) {
  alignas(64) uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  alignas(64) float z0[kLanes], z1[kLanes], z2[kLanes], z3[kLanes];
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t base = 0; base < ngroups; base += kLanes) {
    const int64_t n = ngroups - base < kLanes ? ngroups - base : kLanes;
    const int lanes = static_cast<int>((n + 15) & ~int64_t(15));  // short tails: whole 16-lane steps only
    philox_lanes(key0, key1, group0 + static_cast<uint64_t>(base), lanes, c0, c1, c2, c3);
#pragma GCC ivdep
    for (int i = 0; i < lanes; ++i) {
      const float u0 = word_to_uniform(c0[i]), u2 = word_to_uniform(c2[i]);
      const float r0 = sqrtf(-2.0f * log_poly(clamp_min_uniform(u0)));
      const float r1 = sqrtf(-2.0f * log_poly(clamp_min_uniform(u2)));
      const float u1 = word_to_uniform(c1[i]), u3 = word_to_uniform(c3[i]);
      z0[i] = r0 * sin_2pi_quadrant(u1, 1);
      z1[i] = r0 * sin_2pi_quadrant(u1, 0);
      z2[i] = r1 * sin_2pi_quadrant(u3, 1);
      z3[i] = r1 * sin_2pi_quadrant(u3, 0);
    }
    float* o = out + 4 * base;
    for (int64_t i = 0; i < n; ++i) {
      o[4 * i + 0] = z0[i];
      o[4 * i + 1] = z1[i];
      o[4 * i + 2] = z2[i];
      o[4 * i + 3] = z3[i];
    }
  }
}

// The uniforms u0..u3 of counter groups group0 .. group0 + ngroups - 1, four per group in
// order (the dequantisation uniforms: README, "The noise stream"), by the normals' word map.
void uniforms_cpu(uint64_t seed, uint64_t group0, int64_t ngroups, float* out) {
  alignas(64) uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t base = 0; base < ngroups; base += kLanes) {
    const int64_t n = ngroups - base < kLanes ? ngroups - base : kLanes;
    philox_lanes(key0, key1, group0 + static_cast<uint64_t>(base), static_cast<int>((n + 15) & ~int64_t(15)), c0,
                 c1, c2, c3);
    float* o = out + 4 * base;
    for (int64_t i = 0; i < n; ++i) {
      o[4 * i + 0] = word_to_uniform(c0[i]);
      o[4 * i + 1] = word_to_uniform(c1[i]);
      o[4 * i + 2] = word_to_uniform(c2[i]);
      o[4 * i + 3] = word_to_uniform(c3[i]);
    }
  }
}

MF_ISA_END
}  // namespace mollify_fast

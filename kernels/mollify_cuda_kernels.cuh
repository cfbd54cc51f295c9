// The CUDA kernels' work, written once as __host__ __device__ functions (CONTRACT sections 2-4).
//
// kernels/mollify_cuda.cu wraps these in __global__ kernels and launches them on the GPU;
// csrc/mollify_cuda_host.cpp (compiled by the host compiler, always) runs the very same
// functions on CPU tensors over the same grid and block decomposition, so CI tests the GPU
// code's indexing, tiling, halos and tails without a GPU. Rules that keep that possible:
//   * a function here reads its block and thread index from arguments, never from blockIdx;
//   * a kernel with shared memory is a sequence of phases; the device puts __syncthreads()
//     between them, the host runs phase k for every thread of the block before phase k+1;
//   * device-only intrinsics sit behind wrappers with host definitions (csrc/philox.h:
//     mulhi32, box_muller_radius, sincos_two_pi; csrc/dtypes.h: the float16/bfloat16
//     conversions, round to nearest even on both).
//
// Noise: one thread per Philox counter group draws the 4 normals of logical elements
// 4g .. 4g+3 (one 10-round Philox gives 4 normals; one call per output is ALU-bound) and
// writes those 4 outputs: one vector load and store on aligned contiguous tensors.
//
// Blur + noise: one block per 32 x 32 output tile of one plane. Phases: (0) thread 0 sets up
// the tile (plane offsets, sample, parameters: the only 64-bit divisions, once per tile);
// (1) all threads load the tile plus its mirrored halo into shared memory as float (double
// for double), and threads 0..2r compute the 2r+1 Gaussian weights; (2) the width pass into
// a second shared array; (3) the height pass, one Philox per 4 consecutive outputs, the
// store. Weights stay unnormalised in the passes and the result is scaled once by
// alpha / (sum w)^2. Radii 0..8 are template parameters (the tap loops unroll and a thread
// keeps its 4 + 2r input window in registers); larger radii and per-sample radii take the
// runtime-radius instance. The halo is mirrored once, so the tiled kernel needs r < min(H, W)
// (checked by plan_launch); a tile whose shared memory exceeds kTiledSmemLimit takes the
// direct kernel ((2r+1)^2 taps per output, any r < min(H, W)).
#pragma once

#include <math.h>
#include <stdint.h>

#include <stdlib.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "dtypes.h"
#include "mollify_args.h"
#include "philox.h"

#if defined(__CUDACC__)
#define MF_UNROLL _Pragma("unroll")
#else
#define MF_UNROLL
#endif

namespace mollify_fast {

constexpr int kThreads = 256;  // threads per block, every kernel
constexpr int kTileH = 32;     // blur output tile: 32 x 32 = 1024 outputs, one quad per thread
constexpr int kTileW = 32;
constexpr int kQuadsPerRow = kTileW / 4;
constexpr int kMaxTemplatedRadius = 8;  // ceil(3 sigma) for sigma <= 2.67
// Dynamic shared memory a tiled blur block may use: below the opt-in limit of every
// architecture built (sm_80 163 KB, sm_86/89 99 KB, sm_90 227 KB). float32 tiles fit up to
// r = 54, float64 up to r = 34.
constexpr int64_t kTiledSmemLimit = 96 * 1024;
// Grid-stride noise: at most this many blocks (fills any current GPU many times over).
constexpr int64_t kMaxNoiseBlocks = int64_t(1) << 16;

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// Four consecutive values of a float shared array at a 16-byte aligned address as one
// LDS.128 / STS.128 (the tile rows, the width-blurred rows and their offsets are multiples of
// 4 floats); double moves them one by one. nvcc cannot prove the alignment of a runtime
// offset into dynamic shared memory by itself, and scalar LDS were 10 of 81 instructions per
// element of the float32 r = 3 blur (MODELED sm_90).
template <typename A>
MF_HD void lds4(const A* p, A v[4]) {
  if constexpr (sizeof(A) == 4) {
    const Vec4<A> q = *reinterpret_cast<const Vec4<A>*>(p);
    MF_UNROLL
    for (int j = 0; j < 4; ++j) v[j] = q.v[j];
  } else {
    MF_UNROLL
    for (int j = 0; j < 4; ++j) v[j] = p[j];
  }
}

template <typename A>
MF_HD void sts4(A* p, const A v[4]) {
  if constexpr (sizeof(A) == 4) {
    Vec4<A> q;
    MF_UNROLL
    for (int j = 0; j < 4; ++j) q.v[j] = v[j];
    *reinterpret_cast<Vec4<A>*>(p) = q;
  } else {
    MF_UNROLL
    for (int j = 0; j < 4; ++j) p[j] = v[j];
  }
}

MF_HD bool aligned16(const void* p, size_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; }

// Marks v as used here on the GPU (an empty asm that reads and may rewrite it; nothing on the
// host): the work that produced it runs on every path, and nvcc cannot sink it into the branch
// of a select that uses it on one side only. Where that branch is rare (a sample with blur sigma
// 0; the 28 of 256 threads that load no tile column at r = 3) this keeps one straight path,
// which is the path the GPU runs for every other tile and the one the sm_90 report counts (its
// rule "fewest instructions among paths that store the same bytes" otherwise counted the rare
// branch: the width pass taken as the blur sigma 0 copy, the tile loads skipped).
MF_HD void keep(float& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+f"(v));
#endif
}
MF_HD void keep(double& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+d"(v));
#endif
}
template <typename P>
MF_HD void keep(P*& p) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+l"(p));
#endif
}

// A global-memory element as the compute type: ld.global through __ldca (a plain cached load)
// on the GPU, Io<T>::load on the host. For a pointer that went through keep() nvcc no longer
// knows the address space and would emit a generic LD.
template <typename T>
MF_HD typename Io<T>::acc load_global(const T* p) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 2) {
    T v;
    v.bits = __ldca(reinterpret_cast<const unsigned short*>(p));
    return Io<T>::load(&v);
  } else {
    return __ldca(p);
  }
#else
  return Io<T>::load(p);
#endif
}

// ============================== noise ==============================

// One thread's work in the grid-stride loop over counter groups: groups first, first +
// stride, ... kVec: x, out (and noise) are 1-D contiguous and 4-element aligned (checked by
// plan_launch). kPerSample: sigma or alpha has one value per sample; otherwise the scalar
// parameters are read once and the loop has no division at all.
template <typename T, bool kVec, bool kPerSample>
MF_HD void noise_thread(const MollifyArgs& a, int64_t first, int64_t stride) {
  using A = typename Io<T>::acc;
  const int64_t groups = (a.numel + 3) >> 2;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  T* __restrict__ out = static_cast<T*>(a.out);
  T* __restrict__ noise = static_cast<T*>(a.noise);
  const A al0 = static_cast<A>(a.alpha), sg0 = static_cast<A>(a.sigma);
  for (int64_t g = first; g < groups; g += stride) {
    float z[4];
    normals4(a.seed, a.offset + static_cast<uint64_t>(g), z);
    const int64_t i0 = g << 2;
    if (kVec) {
      A al = al0, sg = sg0;
      bool whole = i0 + 4 <= a.numel;
      if (kPerSample) {
        const int64_t n = i0 / a.sample_numel;
        whole = whole && i0 + 4 <= (n + 1) * a.sample_numel;  // all 4 in one sample
        al = param<A>(a.alpha_p, a.alpha, n);
        sg = param<A>(a.sigma_p, a.sigma, n);
      }
      if (whole) {
        const Vec4<T> xv = *reinterpret_cast<const Vec4<T>*>(x + i0);
        Vec4<T> ov;
        MF_UNROLL
        for (int k = 0; k < 4; ++k) Io<T>::store(&ov.v[k], al * Io<T>::load(&xv.v[k]) + sg * static_cast<A>(z[k]));
        *reinterpret_cast<Vec4<T>*>(out + i0) = ov;
        if (noise) {
          Vec4<T> nv;
          MF_UNROLL
          for (int k = 0; k < 4; ++k) Io<T>::store(&nv.v[k], static_cast<A>(z[k]));
          *reinterpret_cast<Vec4<T>*>(noise + i0) = nv;
        }
        continue;
      }
    }
    // Scalar path: the tail, groups that straddle samples, and any strides.
    for (int k = 0; k < 4; ++k) {
      const int64_t i = i0 + k;
      if (i >= a.numel) break;
      A al = al0, sg = sg0;
      if (kPerSample) {
        const int64_t n = i / a.sample_numel;
        al = param<A>(a.alpha_p, a.alpha, n);
        sg = param<A>(a.sigma_p, a.sigma, n);
      }
      int64_t ox = i, oo = i, on = i;
      if (!kVec) unravel_offsets(a, a.ndim, i, ox, oo, on);
      Io<T>::store(out + oo, al * Io<T>::load(x + ox) + sg * static_cast<A>(z[k]));
      if (noise) Io<T>::store(noise + on, static_cast<A>(z[k]));
    }
  }
}

// ============================== blur ==============================

// Per-launch geometry of the blur (host-computed; the same for every block).
struct BlurGeom {
  int64_t planes, planes_per_sample;
  int64_t tiles;              // planes * tiles_y * tiles_x: tile t is (plane, row, column) in row-major order
  int32_t tiles_x, tiles_y;   // 32 x 32 tiles per plane row and column
  int32_t H, W;
  int32_t off32;    // 1: offsets within a plane of x and out fit in int32
  int32_t R;        // halo radius: the template radius, or max_radius for the runtime instance
  int32_t stride;   // shared row stride of the input tile: kTileW + 2R rounded up to 4
  int32_t wts_off, in_off, mid_off;  // offsets (in A elements) of the shared arrays
};

// Per-tile values thread 0 writes in phase 0 and every thread reads after the barrier.
template <typename A>
struct BlurTile {
  int64_t ox, oo, on;  // plane offsets in x, out, noise
  int64_t base;        // logical index of (plane, 0, 0)
  A al, sg, s;         // alpha, sigma, blur sigma of the tile's sample
  A scale;             // alpha / (sum w)^2 (thread 0 writes it in phase 2, phase 3 reads it)
  int32_t r;           // this sample's radius (0: blur sigma 0, the identity)
  int32_t tx, ty;      // the tile's column and row in its plane
};

template <typename A>
MF_HD int64_t blur_smem_elems(int R) {
  const int rows = kTileH + 2 * R, stride = (kTileW + 2 * R + 3) & ~3;
  const int64_t head = (sizeof(BlurTile<A>) + sizeof(A) - 1) / sizeof(A);
  return ((head + 3) & ~int64_t(3)) + ((2 * R + 1 + 3) & ~3) + int64_t(rows) * stride + int64_t(rows) * kTileW;
}

template <typename A>
inline BlurGeom make_blur_geom(const MollifyArgs& a, int R) {
  BlurGeom g{};
  const int hd = a.ndim - 2, wd = a.ndim - 1;
  g.H = static_cast<int32_t>(a.sizes[hd]);
  g.W = static_cast<int32_t>(a.sizes[wd]);
  g.planes = a.numel / (a.sizes[hd] * a.sizes[wd]);
  g.planes_per_sample = g.planes / a.batch;
  g.tiles_x = static_cast<int32_t>((g.W + kTileW - 1) / kTileW);
  g.tiles_y = static_cast<int32_t>((g.H + kTileH - 1) / kTileH);
  g.tiles = g.planes * g.tiles_x * g.tiles_y;
  g.R = R;
  // Largest offset within one plane, in x and in out: int32 index math when below 2^31.
  const int64_t ext_x = (g.H - 1) * std::abs(a.x_strides[hd]) + (g.W - 1) * std::abs(a.x_strides[wd]);
  const int64_t ext_o = (g.H - 1) * std::abs(a.out_strides[hd]) + (g.W - 1) * std::abs(a.out_strides[wd]);
  const int64_t ext_n = (g.H - 1) * std::abs(a.noise_strides[hd]) + (g.W - 1) * std::abs(a.noise_strides[wd]);
  g.off32 = std::max(ext_x, std::max(ext_o, ext_n)) < (int64_t(1) << 31);
  g.stride = (kTileW + 2 * R + 3) & ~3;
  const int64_t head = (sizeof(BlurTile<A>) + sizeof(A) - 1) / sizeof(A);
  g.wts_off = static_cast<int32_t>((head + 3) & ~int64_t(3));
  g.in_off = g.wts_off + ((2 * R + 1 + 3) & ~3);
  g.mid_off = g.in_off + (kTileH + 2 * R) * g.stride;
  return g;
}

// |i|: one IABS on the GPU (written as PTX abs.s32: nvcc turned abs(i0 + c) into a compare and a
// predicated subtract, 2 instructions, on every loaded row).
MF_HD int iabs(int i) {
#if defined(__CUDA_ARCH__)
  int r;
  asm("abs.s32 %0, %1;" : "=r"(r) : "r"(i));
  return r;
#else
  return i < 0 ? -i : i;
#endif
}

// Mirror without repeating the edge, one reflection: valid for -n < i < 2n - 1.
MF_HD int imin(int a, int b) { return a < b ? a : b; }

// One unnormalised Gaussian tap exp(-k^2 / (2 s^2)), written exp(-(k/s)^2 / 2): 2 s^2
// underflows to 0 for s ~ 1e-30 (the centre tap became 0/0 = NaN), while k/s overflows
// harmlessly to inf (weight 0) and the centre stays exp(0) = 1, so a tiny sigma is the identity.
template <typename A>
MF_HD A gauss_tap(A k, A s) {
  const A ks = k / s;
  return exp(A(-0.5) * ks * ks);
}

// Branch-free: min(|i|, 2(n-1) - |i|) is i inside the plane, -i above it and 2(n-1) - i below
// (IABS, IADD3, VIMNMX on sm_90: the compare-and-select form compiled to ~14 instructions with
// predicate juggling per loaded row, 28 of 138 instructions per element of the bfloat16 r = 3
// blur, MODELED sm_90).
MF_HD int mirror_once(int i, int n) {
  const int m = abs(i);
  return imin(m, 2 * (n - 1) - m);
}

// mirror_once clamped into [0, n), for i >= -(n - 1), given lim = 2 (n - 1) - i0 and c = i - i0:
// relu(min(|i|, 2 (n - 1) - i)) (for i < 0, -i <= 2 (n - 1) - i, so the min is |i| as in
// mirror_once). Rows and columns of a partial tile past its halo (i >= 2n - 1) then load pixel 0
// (never used) instead of needing a predicate. With i0 and lim per thread and c a constant it
// is IABS + VIADDMNMX.RELU (sm_90), against 5 instructions for relu(mirror_once(i)).
MF_HD int mirror_clamped(int i0, int lim, int c) {
  const int m = imin(iabs(i0 + c), lim - c);
  return m < 0 ? 0 : m;
}
// Phase 0 (thread 0 only): which tile (plane, row, column), its plane offsets, sample and
// parameters. Every thread reads the tile's coordinates from shared memory after the barrier:
// nothing per tile is loop-invariant for the compiler to hoist out of the block's tile loop
// (hoisted row offsets spilled 88 B at 80 registers, MODELED sm_90 float32 r = 3).
template <typename T>
MF_HD void blur_phase_setup(const MollifyArgs& a, const BlurGeom& g, int64_t tile, typename Io<T>::acc* smem) {
  using A = typename Io<T>::acc;
  BlurTile<A>& t = *reinterpret_cast<BlurTile<A>*>(smem);
  const int64_t per_plane = static_cast<int64_t>(g.tiles_x) * g.tiles_y;
  const int64_t plane = tile / per_plane;
  const int rem = static_cast<int>(tile - plane * per_plane);
  t.ty = rem / g.tiles_x;
  t.tx = rem - t.ty * g.tiles_x;
  // The plane dims of contiguous NCHW coalesce into one: no 64-bit division then. Thread 0
  // runs this while the block waits at the barrier, once per 1024 outputs.
  if (a.ndim == 3) {
    t.ox = plane * a.x_strides[0];
    t.oo = plane * a.out_strides[0];
    t.on = plane * a.noise_strides[0];
  } else {
    unravel_offsets(a, a.ndim - 2, plane, t.ox, t.oo, t.on);
  }
  t.base = plane * g.H * static_cast<int64_t>(g.W);
  const bool per_sample = a.alpha_p || a.sigma_p || a.blur_p || a.radius_p;
  const int64_t n = per_sample ? plane / g.planes_per_sample : 0;
  t.al = param<A>(a.alpha_p, a.alpha, n);
  t.sg = param<A>(a.sigma_p, a.sigma, n);
  t.s = param<A>(a.blur_p, a.blur_sigma, n);
  t.r = t.s == A(0) ? 0 : (a.radius_p ? a.radius_p[n] : a.radius);
}

// Phase 1's loads: a thread keeps one column of the tile (its mirrored index and offset are
// computed once) and walks rows kThreads / cols apart. Off: int32_t when every offset inside
// a plane fits (plan_launch checks), which saves the 64-bit multiplies.
template <typename T, typename Off, int KR>
MF_HD void load_tile_rows(const T* __restrict__ x, int64_t sh64, int64_t sw64, const BlurGeom& g, int R, int stride,
                          int cols_valid, int rows_valid, int h0, int w0, typename Io<T>::acc* in, int tid) {
  const Off sh = static_cast<Off>(sh64), sw = static_cast<Off>(sw64);
  if constexpr (KR >= 0) {
    // Fixed trip count, unrolled: all of a thread's loads are in flight at once (a loop of
    // dependent iterations kept one load in flight and left the blur latency-bound: 5x
    // x.clone() on an H100 at 256x3x256x256). Every row and column index is mirrored and
    // clamped into the plane, so a partial tile loads whole rows too (the extra slots are never
    // read for a stored output) and no load needs a bounds predicate: per loaded element a
    // mirror (4), an address (2), the load, a conversion and the shared store, ~9 instructions
    // against ~28 with per-row bounds and compare-and-select mirrors (MODELED sm_90, bfloat16
    // r = 3). Only threads past the last whole column set (28 of 256 at r = 3), and rows past
    // the halo in the last iteration, load nothing.
    constexpr int kCols = kTileW + 2 * KR, kRows = kTileH + 2 * KR, kStep = kThreads / kCols;
    constexpr int kIters = (kRows + kStep - 1) / kStep;
    const int col = tid % kCols, row0 = tid / kCols;
    const bool active = tid < kStep * kCols;
    // x is the plane's first element; every offset is one IMAD from the column's: Off(int32)
    // offsets then address as one IMAD.WIDE (a 64-bit pointer plus offset took 5 per load).
    const int left = w0 - KR + col, top = h0 - KR + row0;
    const Off coff = static_cast<Off>(mirror_clamped(left, 2 * (g.W - 1) - left, 0)) * sw;
    const int lim = 2 * (g.H - 1) - top;
    const T* xp = x;
    keep(xp);  // the plane's pointer once, not its offset re-added per load (reassociated: 4 per load)
    typename Io<T>::acc v[kIters];
    // The loads need no predicate (every address is inside the plane); the shared stores do.
    MF_UNROLL
    for (int i = 0; i < kIters; ++i) {
      v[i] = load_global(xp + (static_cast<Off>(mirror_clamped(top, lim, i * kStep)) * sh + coff));
      keep(v[i]);
    }
    MF_UNROLL
    for (int i = 0; i < kIters; ++i) {
      // Rows below (kIters - 1) * kStep are inside the tile for every active thread.
      const bool ok = active && (i < kIters - 1 || row0 + i * kStep < kRows);
      if (ok) in[(row0 + i * kStep) * stride + col] = v[i];
    }
  } else {
    const int cols = kTileW + 2 * R;
    const int row_step = kThreads / cols;
    const int col = tid % cols;
    const int row0 = tid / cols;
    // Threads past the last whole column set and columns past a partial tile load nothing.
    if (row0 >= row_step || col >= cols_valid) return;
    const T* __restrict__ xc = x + static_cast<Off>(mirror_once(w0 - R + col, g.W)) * sw;
    for (int row = row0; row < rows_valid; row += row_step)
      in[row * stride + col] = Io<T>::load(xc + static_cast<Off>(mirror_once(h0 - R + row, g.H)) * sh);
  }
}

// Phase 1: the tile's input rows h0 - R .. h0 + th + R - 1 and columns w0 - R .. w0 + tw + R - 1
// (mirrored) into shared memory; threads 0..2r write the unnormalised weights.
template <typename T, int KR>
MF_HD void blur_phase_load(const MollifyArgs& a, const BlurGeom& g, int tile_x, int tile_y,
                           typename Io<T>::acc* smem, int tid) {
  using A = typename Io<T>::acc;
  const BlurTile<A>& t = *reinterpret_cast<const BlurTile<A>*>(smem);
  const int R = KR >= 0 ? KR : g.R;
  const int stride = KR >= 0 ? ((kTileW + 2 * KR + 3) & ~3) : g.stride;
  A* wts = smem + g.wts_off;
  A* in = smem + g.in_off;
  if (KR >= 0) {
    // Templated radius: always 2 KR + 1 taps. A tile of a sample with blur sigma 0 (r = 0)
    // gets the delta weights (1 at the centre), so the unrolled passes need no branch on r;
    // taps4 then selects the centre value, exact even next to inf / nan.
    if (tid <= 2 * R) {
      const A k = static_cast<A>(tid - R);
      wts[tid] = t.r == 0 ? A(tid == R ? 1 : 0) : gauss_tap(k, t.s);
    }
  } else if (tid <= 2 * t.r) {
    const A k = static_cast<A>(tid - t.r);
    wts[tid] = gauss_tap(k, t.s);
  }
  const int h0 = tile_y * kTileH, w0 = tile_x * kTileW;
  const int rows_valid = imin(kTileH, g.H - h0) + 2 * R, cols_valid = imin(kTileW, g.W - w0) + 2 * R;
  const int hd = a.ndim - 2, wd = a.ndim - 1;
  if (g.off32)
    load_tile_rows<T, int32_t, KR>(static_cast<const T*>(a.x) + t.ox, a.x_strides[hd], a.x_strides[wd], g, R, stride,
                               cols_valid, rows_valid, h0, w0, in, tid);
  else
    load_tile_rows<T, int64_t, KR>(static_cast<const T*>(a.x) + t.ox, a.x_strides[hd], a.x_strides[wd], g, R, stride,
                               cols_valid, rows_valid, h0, w0, in, tid);
}

// The 4 blurred values acc[j] = sum_k w_k src[j + k * kK], k = 0..2r, unnormalised. Width
// pass: kK = 1 (the 4 + 2r inputs are read once into registers when the radius is the
// template's); height pass: kK = kTileW (4 consecutive floats, one 16-byte load, per tap row).
// KR > 0: exactly 2 KR + 1 unrolled taps (r is KR or 0; r = 0 has delta weights and takes the
// centre value); KR = 0: a copy; KR = -1: runtime radius r.
template <int KR, int kK, typename A>
MF_HD void taps4(const A* src, const A* wts, int r, A acc[4]) {
  if constexpr (KR > 0) {
    constexpr int kTaps = 2 * KR + 1;
    MF_UNROLL
    for (int j = 0; j < 4; ++j) acc[j] = A(0);
    if constexpr (kK == 1) {
      A win[(kTaps + 3 + 3) & ~3];  // the quad's 4 + 2r inputs (rounded up to whole LDS.128), read once
      MF_UNROLL
      for (int m = 0; m < kTaps + 3; m += 4) lds4(src + m, win + m);
      MF_UNROLL
      for (int k = 0; k < kTaps; ++k) {
        const A wk = wts[k];
        MF_UNROLL
        for (int j = 0; j < 4; ++j) acc[j] += wk * win[j + k];
      }
      MF_UNROLL
      for (int j = 0; j < 4; ++j) {
        keep(acc[j]);
        acc[j] = r == 0 ? win[KR + j] : acc[j];
      }
    } else {
      A centre[4];
      MF_UNROLL
      for (int k = 0; k < kTaps; ++k) {
        const A wk = wts[k];
        A v[4];
        lds4(src + k * kK, v);
        MF_UNROLL
        for (int j = 0; j < 4; ++j) acc[j] += wk * v[j];
        if (k == KR) {
          MF_UNROLL
          for (int j = 0; j < 4; ++j) centre[j] = v[j];
        }
      }
      MF_UNROLL
      for (int j = 0; j < 4; ++j) {
        keep(acc[j]);
        acc[j] = r == 0 ? centre[j] : acc[j];
      }
    }
  } else {
    if (KR == 0 || r == 0) {
      MF_UNROLL
      for (int j = 0; j < 4; ++j) acc[j] = src[j];
      return;
    }
    MF_UNROLL
    for (int j = 0; j < 4; ++j) acc[j] = A(0);
    for (int k = 0; k <= 2 * r; ++k) {  // runtime radius
      const A wk = wts[k];
      MF_UNROLL
      for (int j = 0; j < 4; ++j) acc[j] += wk * src[k * kK + j];
    }
  }
}

// Calls item(q) for q = tid, tid + kThreads, ... below items. With a template radius the item
// count is a constant (kItems), so the loop unrolls into straight-line code (no loop counter,
// and the SASS report sees every item a thread does); the runtime radius loops.
template <int kItems, typename F>
MF_HD void for_items(int tid, int items, F&& item) {
  if constexpr (kItems > 0) {
    constexpr int kIters = (kItems + kThreads - 1) / kThreads;
    MF_UNROLL
    for (int i = 0; i < kIters; ++i) {
      const int q = tid + i * kThreads;
      if ((i + 1) * kThreads <= kItems || q < kItems) item(q);  // constant true but in the last iteration
    }
  } else {
    for (int q = tid; q < items; q += kThreads) item(q);
  }
}

// Phase 2: width pass, 4 consecutive columns per item; thread 0 also writes the tile's output
// scale alpha / (sum w)^2. Templated radius: every row and column of the tile, whole or partial
// (the slots past a partial tile hold clamped pixels or stale values and feed only outputs
// that are not stored): no bounds branch. Runtime radius: rows 0 .. th + 2R - 1, columns < tw.
template <typename T, int KR>
MF_HD void blur_phase_width(const BlurGeom& g, int tile_x, int tile_y, typename Io<T>::acc* smem, int tid) {
  using A = typename Io<T>::acc;
  BlurTile<A>& t = *reinterpret_cast<BlurTile<A>*>(smem);
  const int R = KR >= 0 ? KR : g.R;
  const int stride = KR >= 0 ? ((kTileW + 2 * KR + 3) & ~3) : g.stride;
  const A* wts = smem + g.wts_off;
  const A* in = smem + g.in_off;
  A* mid = smem + g.mid_off;
  const int r = t.r;
  if (tid == 0) {
    // Templated radius: 2 KR + 1 weights (delta weights sum to 1 when r = 0).
    const int taps = KR >= 0 ? 2 * R + 1 : 2 * r + 1;
    A norm = 0;
    for (int k = 0; k < taps; ++k) norm += wts[k];
    t.scale = r == 0 ? t.al : t.al / (norm * norm);
  }
  const int rows_valid = imin(kTileH, g.H - tile_y * kTileH) + 2 * R;
  const int tw = imin(kTileW, g.W - tile_x * kTileW);
  // Templated: the tap window starts at column c4 (R = r); runtime: at c4 + R - r.
  const int shift = KR >= 0 ? 0 : R - r;
  for_items<(KR >= 0 ? (kTileH + 2 * KR) * kQuadsPerRow : 0)>(tid, (kTileH + 2 * R) * kQuadsPerRow, [&](int q) {
    const int row = q / kQuadsPerRow, c4 = (q % kQuadsPerRow) * 4;
    if (KR < 0 && (row >= rows_valid || c4 >= tw)) return;
    A acc[4];
    taps4<KR, 1>(in + row * stride + c4 + shift, wts, r, acc);  // tap k of column c4 + j: [j + k]
    sts4(mid + row * kTileW + c4, acc);
  });
}

// The normal of logical element i0 + j from the draws of groups i0 / 4 (za) and i0 / 4 + 1
// (zb): selects, not an indexed register array (that would go to local memory).
MF_HD float pick_normal(const float za[4], const float zb[4], int m) {
  const float a = m == 0 ? za[0] : m == 1 ? za[1] : m == 2 ? za[2] : za[3];
  const float b = m == 4 ? zb[0] : m == 5 ? zb[1] : zb[2];
  return m < 4 ? a : b;
}

// Phase 3: height pass over the 2r+1 rows, the tile's scale, noise, store.
template <typename T, int KR>
MF_HD void blur_phase_store(const MollifyArgs& a, const BlurGeom& g, int tile_x, int tile_y,
                            typename Io<T>::acc* smem, int tid) {
  using A = typename Io<T>::acc;
  const BlurTile<A>& t = *reinterpret_cast<const BlurTile<A>*>(smem);
  const int R = KR >= 0 ? KR : g.R;
  const A* wts = smem + g.wts_off;
  const A* mid = smem + g.mid_off;
  const int r = t.r;
  const A scale = t.scale, sg = t.sg;
  const int h0 = tile_y * kTileH, w0 = tile_x * kTileW;
  const int th = imin(kTileH, g.H - h0), tw = imin(kTileW, g.W - w0);
  const int hd = a.ndim - 2, wd = a.ndim - 1;
  const int64_t osh = a.out_strides[hd], osw = a.out_strides[wd];
  T* __restrict__ out = static_cast<T*>(a.out) + t.oo;
  T* __restrict__ noise = static_cast<T*>(a.noise);
  const int shift = KR >= 0 ? 0 : R - r;
  for_items<(KR >= 0 ? kTileH * kQuadsPerRow : 0)>(tid, kTileH * kQuadsPerRow, [&](int q) {
    const int hl = q / kQuadsPerRow, c4 = (q % kQuadsPerRow) * 4;
    if (hl >= th || c4 >= tw) return;
    A acc[4];
    taps4<KR, kTileW>(mid + (hl + shift) * kTileW + c4, wts, r, acc);
    const int h = h0 + hl, w = w0 + c4;
    const int64_t i0 = t.base + static_cast<int64_t>(h) * g.W + w;
    const int lane = static_cast<int>(i0 & 3);
    float z[4];
    normals4(a.seed, a.offset + static_cast<uint64_t>(i0 >> 2), z);
    if (lane != 0) {  // W not a multiple of 4: the quad spans two counter groups
      float zb[4];
      normals4(a.seed, a.offset + static_cast<uint64_t>(i0 >> 2) + 1, zb);
      const float za[4] = {z[0], z[1], z[2], z[3]};
      MF_UNROLL
      for (int j = 0; j < 4; ++j) z[j] = pick_normal(za, zb, lane + j);
    }
    const int n = imin(4, tw - c4);
    T* o = out + h * osh + w * osw;
    if (n == 4 && osw == 1 && aligned16(o, 4 * sizeof(T))) {
      Vec4<T> ov;
      MF_UNROLL
      for (int j = 0; j < 4; ++j) Io<T>::store(&ov.v[j], scale * acc[j] + sg * static_cast<A>(z[j]));
      *reinterpret_cast<Vec4<T>*>(o) = ov;
    } else {
      MF_UNROLL
      for (int j = 0; j < 4; ++j)
        if (j < n) Io<T>::store(o + j * osw, scale * acc[j] + sg * static_cast<A>(z[j]));
    }
    if (noise) {
      const int64_t on = t.on + h * a.noise_strides[hd] + w * a.noise_strides[wd], nsw = a.noise_strides[wd];
      MF_UNROLL
      for (int j = 0; j < 4; ++j)
        if (j < n) Io<T>::store(noise + on + j * nsw, static_cast<A>(z[j]));
    }
  });
}

// ---- direct blur (tiles too large for shared memory): one thread per counter group ----

// Blurred value at (row h, column w) of the plane at x: (2r+1)^2 mirrored taps.
template <typename T>
MF_HD typename Io<T>::acc blur_direct_at(const MollifyArgs& a, const T* x, int h, int w, int H, int W,
                                         typename Io<T>::acc s, int r) {
  using A = typename Io<T>::acc;
  const int hd = a.ndim - 2, wd = a.ndim - 1;
  if (r == 0) return Io<T>::load(x + h * a.x_strides[hd] + w * a.x_strides[wd]);
  A norm = 0;
  for (int k = -r; k <= r; ++k) norm += gauss_tap(A(k), s);
  A acc = 0;
  for (int i = -r; i <= r; ++i) {
    const T* row = x + mirror_once(h + i, H) * a.x_strides[hd];
    A racc = 0;
    for (int j = -r; j <= r; ++j) racc += gauss_tap(A(j), s) * Io<T>::load(row + mirror_once(w + j, W) * a.x_strides[wd]);
    acc += gauss_tap(A(i), s) * racc;
  }
  return acc / (norm * norm);
}

template <typename T>
MF_HD void blur_direct_thread(const MollifyArgs& a, const BlurGeom& g, int64_t first, int64_t stride) {
  using A = typename Io<T>::acc;
  const int hd = a.ndim - 2, wd = a.ndim - 1;
  const int64_t groups = (a.numel + 3) >> 2, HW = static_cast<int64_t>(g.H) * g.W;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  T* noise = static_cast<T*>(a.noise);
  for (int64_t gi = first; gi < groups; gi += stride) {
    float z[4];
    normals4(a.seed, a.offset + static_cast<uint64_t>(gi), z);
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * gi + k;
      if (i >= a.numel) break;
      const int64_t p = i / HW, rem = i - p * HW;
      const int h = static_cast<int>(rem / g.W), w = static_cast<int>(rem - static_cast<int64_t>(h) * g.W);
      const int64_t n = p / g.planes_per_sample;
      const A s = param<A>(a.blur_p, a.blur_sigma, n);
      const int r = s == A(0) ? 0 : (a.radius_p ? a.radius_p[n] : a.radius);
      int64_t px, po, pn;
      unravel_offsets(a, hd, p, px, po, pn);
      const A b = blur_direct_at<T>(a, x + px, h, w, g.H, g.W, s, r);
      const A al = param<A>(a.alpha_p, a.alpha, n), sg = param<A>(a.sigma_p, a.sigma, n);
      Io<T>::store(out + po + h * a.out_strides[hd] + w * a.out_strides[wd], al * b + sg * static_cast<A>(z[k]));
      if (noise) Io<T>::store(noise + pn + h * a.noise_strides[hd] + w * a.noise_strides[wd], static_cast<A>(z[k]));
    }
  }
}

// ============================== launch plan (host) ==============================

enum class KernelKind { kNoise, kBlurTiled, kBlurDirect };

// Which kernel, which template instance and which grid: one decision for the GPU launcher and
// the host driver, so the emulation runs exactly the decomposition the GPU runs.
struct LaunchPlan {
  KernelKind kind;
  bool vec = false, per_sample = false;  // noise
  int kr = -1;                           // tiled blur: template radius, -1 for the runtime instance
  BlurGeom geom{};
  int64_t smem_bytes = 0;
  int64_t grid_x = 1;
};

inline bool contiguous_aligned(const MollifyArgs& a, size_t elem) {
  if (a.ndim != 1 || a.x_strides[0] != 1 || a.out_strides[0] != 1) return false;
  if (a.noise && a.noise_strides[0] != 1) return false;
  return aligned16(a.x, 4 * elem) && aligned16(a.out, 4 * elem) && (!a.noise || aligned16(a.noise, 4 * elem));
}

// max_blur_blocks: the tiled blur's grid cap (the GPU launcher: a few waves of resident
// blocks; the host driver: a small number, so its tests run several tiles per block).
template <typename T>
inline LaunchPlan plan_launch(const MollifyArgs& a, int64_t max_blur_blocks) {
  using A = typename Io<T>::acc;
  LaunchPlan p;
  if (!a.has_blur) {
    p.kind = KernelKind::kNoise;
    p.vec = contiguous_aligned(a, sizeof(T));
    p.per_sample = a.sigma_p != nullptr || a.alpha_p != nullptr;
    const int64_t groups = (a.numel + 3) / 4;
    p.grid_x = std::min<int64_t>((groups + kThreads - 1) / kThreads, kMaxNoiseBlocks);
    return p;
  }
  if (a.ndim < 3) throw std::invalid_argument("mollify (cuda backend): blur needs x with at least 3 dims [N, ..., H, W]");
  const int64_t H = a.sizes[a.ndim - 2], W = a.sizes[a.ndim - 1];
  const int64_t R = a.max_radius;
  if (R >= std::min(H, W))
    throw std::invalid_argument(
        "mollify (cuda backend): blur radius " + std::to_string(R) + " must be < min(H, W) = " +
        std::to_string(std::min(H, W)) + " (the CUDA blur mirrors the border once); use a smaller blur_sigma or "
        "blur_radius, or backend='cpu' / 'torch', which mirror repeatedly");
  if (W > (int64_t(1) << 30) || H > (int64_t(1) << 30))
    throw std::invalid_argument("mollify (cuda backend): H and W must be below 2**30 for the blur");
  p.kr = (a.radius_p == nullptr && R <= kMaxTemplatedRadius) ? static_cast<int>(R) : -1;
  p.geom = make_blur_geom<A>(a, static_cast<int>(R));
  if (a.batch <= 0 || p.geom.planes % a.batch != 0)
    throw std::invalid_argument("mollify (cuda backend): the blur's planes must split evenly into x.shape[0] samples");
  p.smem_bytes = blur_smem_elems<A>(static_cast<int>(R)) * static_cast<int64_t>(sizeof(A));
  if (p.smem_bytes > kTiledSmemLimit) {
    p.kind = KernelKind::kBlurDirect;
    const int64_t groups = (a.numel + 3) / 4;
    p.grid_x = std::min<int64_t>((groups + kThreads - 1) / kThreads, kMaxNoiseBlocks);
    p.smem_bytes = 0;
    return p;
  }
  p.kind = KernelKind::kBlurTiled;
  p.grid_x = std::max<int64_t>(1, std::min(p.geom.tiles, max_blur_blocks));
  return p;
}

// Calls f(std::integral_constant<int, KR>) for the plan's template radius (KR = -1: runtime).
template <int KR>
struct RadiusTag {
  static constexpr int value = KR;
};

template <typename F>
inline void with_radius(int kr, F&& f) {
  switch (kr) {
    case 0: f(RadiusTag<0>{}); break;
    case 1: f(RadiusTag<1>{}); break;
    case 2: f(RadiusTag<2>{}); break;
    case 3: f(RadiusTag<3>{}); break;
    case 4: f(RadiusTag<4>{}); break;
    case 5: f(RadiusTag<5>{}); break;
    case 6: f(RadiusTag<6>{}); break;
    case 7: f(RadiusTag<7>{}); break;
    case 8: f(RadiusTag<8>{}); break;
    default: f(RadiusTag<-1>{}); break;
  }
}

}  // namespace mollify_fast

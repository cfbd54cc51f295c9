// The CUDA kernels' launch plan, host code only: which kernel, which template instance, which
// grid and how much shared memory for one call, and what the kernels cannot take
// (std::invalid_argument, raised as ValueError). Shared by the GPU launcher
// (kernels/mollify_cuda.cu) and the host driver that runs the kernels' code on CPU tensors
// (kernels/mollify_cuda_host.cpp), so both run the same decomposition. The device code
// (mollify_cuda_kernels.cuh) neither throws nor includes host-only headers.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "mollify_cuda_kernels.cuh"

namespace mollify_fast {

// ============================== launch plan (host) ==============================

enum class KernelKind { kNoise, kBlurTiled, kBlurDirect, kNoiseIn, kBlurNoiseIn, kBlurNoiseInTiled };

// Which kernel, which template instance and which grid: one decision for the GPU launcher and
// the host driver, so the emulation runs exactly the decomposition the GPU runs.
struct LaunchPlan {
  KernelKind kind;
  bool vec = false, per_sample = false;  // noise
  int kr = -1;                           // tiled blur: template radius, -1 for the runtime instance
  bool eps_compute = false;              // noise=: eps stored in the compute type A (else in T)
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
  const bool noise_in = a.noise_in != kNoiseOut;
  if (noise_in) {
    p.eps_compute = a.noise_in == kNoiseInA;
    p.grid_x = std::min<int64_t>((a.numel + kThreads - 1) / kThreads, kMaxNoiseBlocks);
  }
  if (!a.has_blur && noise_in) {
    p.kind = KernelKind::kNoiseIn;
    return p;
  }
  if (!a.has_blur) {
    p.kind = KernelKind::kNoise;
    p.vec = contiguous_aligned(a, sizeof(T));
    p.per_sample = any_per_sample(a);
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
  if (noise_in) {
    // The tiled blur's runtime-radius instance with an eps-reading phase 3, or the direct
    // kernel when the tile does not fit in shared memory.
    p.kr = -1;
    p.kind = p.smem_bytes > kTiledSmemLimit ? KernelKind::kBlurNoiseIn : KernelKind::kBlurNoiseInTiled;
    if (p.kind == KernelKind::kBlurNoiseIn) p.smem_bytes = 0;
    else p.grid_x = std::max<int64_t>(1, std::min(p.geom.tiles, max_blur_blocks));
    return p;
  }
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

// Calls f(static_cast<E*>(nullptr)) for the type E that noise= eps is stored in: the compute
// type A (float for float16/bfloat16 x) or x's type T.
template <typename T, typename F>
inline void with_eps_type(bool eps_compute, F&& f) {
  if (eps_compute)
    f(static_cast<typename Io<T>::acc*>(nullptr));
  else
    f(static_cast<T*>(nullptr));
}

// Calls f(std::integral_constant<bool, VEC>{}, std::integral_constant<bool, PER_SAMPLE>{}) for
// the noise kernel's variant: vector loads and stores, per-sample parameters.
template <typename F>
inline void with_noise_variant(const LaunchPlan& p, F&& f) {
  using Y = std::true_type;
  using N = std::false_type;
  if (p.vec)
    p.per_sample ? f(Y{}, Y{}) : f(Y{}, N{});
  else
    p.per_sample ? f(N{}, Y{}) : f(N{}, N{});
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

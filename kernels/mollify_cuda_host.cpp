// Host driver for the CUDA kernels' code (kernels/mollify_cuda_kernels.cuh): runs the same
// per-thread and per-block functions on CPU memory, over the grid plan_launch gives the GPU.
//
//   noise, direct blur: every block, every thread, each running its grid-stride loop;
//   tiled blur:         every block b and its tiles b, b + grid_x, ...: phase 0 on thread 0,
//                       then phase 1 for all 256 threads, then phase 2, then phase 3, so every
//                       thread finishes a phase before any starts the next, as __syncthreads()
//                       guarantees on the GPU; the shared memory is a host array.
//
// Compiled into mollify_fast._C always (no nvcc needed). It is a test and inspection tool, not
// a fast path: one core, no vectorisation (the `cpu` backend is the fast CPU implementation).
#include <stdint.h>
#include <string.h>

#include <stdexcept>
#include <type_traits>
#include <vector>

#include "dispatch.h"
#include "entry_points.h"
#include "mollify_cuda_plan.h"

namespace mollify_fast {
namespace {

// Every thread of a grid of `blocks` blocks in order (block b's thread t is b * kThreads + t):
// f(thread index, grid stride), each running its grid-stride loop as on the GPU.
template <typename F>
void each_thread(int64_t blocks, F&& f) {
  const int64_t stride = blocks * kThreads;
  for (int64_t i = 0; i < stride; ++i) f(i, stride);
}

template <typename T, bool kVec, bool kPerSample>
void emulate_noise(const MollifyArgs& a, const LaunchPlan& p) {
  each_thread(p.grid_x, [&](int64_t i, int64_t stride) { noise_thread<T, kVec, kPerSample>(a, i, stride); });
}

template <typename T, int KR, typename E = void>
void emulate_blur_tiled(const MollifyArgs& a, const LaunchPlan& p) {
  using A = typename Io<T>::acc;
  // Zeroed once: lanes of a partial quad read (and then drop) tile slots no phase wrote.
  std::vector<A> smem(static_cast<size_t>(p.smem_bytes / sizeof(A)) + 1, A(0));
  const BlurGeom& g = p.geom;
  const BlurTile<A>& tile = *reinterpret_cast<const BlurTile<A>*>(smem.data());
  for (int64_t b = 0; b < p.grid_x; ++b)
    for (int64_t k = b; k < g.tiles; k += p.grid_x) {  // block b's tiles, as the kernel's loop
      blur_phase_setup<T>(a, g, k, smem.data());
      const int tx = tile.tx, ty = tile.ty;
      for (int t = 0; t < kThreads; ++t) blur_phase_load<T, KR>(a, g, tx, ty, smem.data(), t);
      for (int t = 0; t < kThreads; ++t) blur_phase_width<T, KR>(g, tx, ty, smem.data(), t);
      for (int t = 0; t < kThreads; ++t) blur_phase_store<T, KR, E>(a, g, tx, ty, smem.data(), t);
    }
}

// The emulated tiled blur's grid cap: 5 blocks, so any input with more than 5 tiles runs
// several tiles per block (unevenly when the count is not a multiple of 5), the GPU's loop.
constexpr int64_t kEmulatedBlurBlocks = 5;

template <typename T>
void emulate(const MollifyArgs& a) {
  const LaunchPlan p = plan_launch<T>(a, kEmulatedBlurBlocks);
  switch (p.kind) {
    case KernelKind::kNoise:
      with_noise_variant(p, [&](auto vec, auto ps) {
        emulate_noise<T, decltype(vec)::value, decltype(ps)::value>(a, p);
      });
      break;
    case KernelKind::kBlurTiled:
      with_radius(p.kr, [&](auto tag) { emulate_blur_tiled<T, decltype(tag)::value>(a, p); });
      break;
    case KernelKind::kBlurDirect:
      each_thread(p.grid_x, [&](int64_t i, int64_t stride) { blur_direct_thread<T>(a, p.geom, i, stride); });
      break;
    case KernelKind::kNoiseIn:
    case KernelKind::kBlurNoiseIn:
    case KernelKind::kBlurNoiseInTiled:
      with_eps_type<T>(p.eps_compute, [&](auto* tag) {
        using E = std::remove_pointer_t<decltype(tag)>;
        if (p.kind == KernelKind::kBlurNoiseInTiled) {
          emulate_blur_tiled<T, -1, E>(a, p);
          return;
        }
        each_thread(p.grid_x, [&](int64_t i, int64_t stride) {
          if (p.kind == KernelKind::kNoiseIn)
            noise_in_thread<T, E>(a, i, stride);
          else
            blur_noise_in_thread<T, E>(a, i, stride);
        });
      });
      break;
  }
}

}  // namespace

// The mapped noise kernel's grid (as kernels/mollify_cuda.cu launches it), block by block.
void mollify_cuda_emulated_mapped(const MollifyArgs& a, const MapArgs& m) {
  if (a.numel == 0) return;
  const int64_t groups = (a.numel + 3) / 4;
  const int64_t blocks = std::min<int64_t>((groups + kThreads - 1) / kThreads, kMaxNoiseBlocks);
  dispatch_input(m.x_dtype, "mollify_cuda_emulated_mapped", [&](auto xi) {
    dispatch_float(a.dtype, "mollify_cuda_emulated_mapped", [&](auto xo) {
      each_thread(blocks, [&](int64_t i, int64_t stride) {
        mapped_noise_thread<decltype(xi), decltype(xo)>(a, m, i, stride);
      });
    });
  });
}

void mollify_cuda_emulated(const MollifyArgs& a) {
  if (a.numel == 0) return;
  dispatch_float(a.dtype, "mollify_cuda_emulated", [&](auto t) { emulate<decltype(t)>(a); });
}

}  // namespace mollify_fast

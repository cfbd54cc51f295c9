// CUDA kernels for mollify: the __global__ wrappers and their launches. The work itself (per
// thread and per block) is in mollify_cuda_kernels.cuh, shared with the host driver
// (kernels/mollify_cuda_host.cpp) that runs it on CPU tensors for CI; read that file's header for
// the design of the noise and the tiled separable blur.
//
// Errors: plan_launch refuses what the kernels cannot do (std::invalid_argument -> ValueError);
// a launch error (bad configuration, missing kernel image for the GPU) is checked right after
// each launch with cudaGetLastError and raised at the call (RuntimeError). A fault inside a
// running kernel is asynchronous: CUDA reports it at the next synchronising call on the
// stream (torch.cuda.synchronize(), .item(), a copy to the CPU); MOLLIFY_FAST_CUDA_SYNC=1
// makes the launcher synchronise after each call so it surfaces at the call that caused it.
#include <cuda_runtime.h>
#include <stdint.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "dispatch.h"
#include "entry_points.h"
#include "mollify_cuda_plan.h"

namespace mollify_fast {
namespace {

// Grid-stride loop over counter groups (noise_thread holds the loop).
template <typename T, bool kVec, bool kPerSample>
__global__ void __launch_bounds__(kThreads) mollify_noise_kernel(const MollifyArgs a) {
  noise_thread<T, kVec, kPerSample>(a, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                                    static_cast<int64_t>(gridDim.x) * blockDim.x);
}

// Blocks take 32 x 32 tiles blockIdx.x, + gridDim.x, ... (a grid of a few waves of resident
// blocks, so the per-block start-up is paid a few times per SM, not once per tile). Four phases
// per tile separated by barriers (the host driver runs them in the same order).
// At least 3 blocks (768 threads) per SM: <= 80 registers. Each block waits at 4 barriers per
// tile, so it takes several resident blocks to keep the SM's loads in flight. float64 and radii
// 7, 8 spill at 80 registers (4-16 B, MODELED sm_90): 2 blocks (128 registers) for those.
template <typename T, int KR>
constexpr int blur_min_blocks() {
  return (sizeof(typename Io<T>::acc) == 8 || KR >= 7) ? 2 : 3;
}

// The block's tiles, phase by phase (E: see blur_phase_store; void draws the noise).
template <typename T, int KR, typename E>
__device__ __forceinline__ void blur_tiles(const MollifyArgs& a, const BlurGeom& g) {
  using A = typename Io<T>::acc;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* smem = reinterpret_cast<A*>(smem_raw);
  const BlurTile<A>& t = *reinterpret_cast<const BlurTile<A>*>(smem);
  const int tid = threadIdx.x;
  for (int64_t tile = blockIdx.x; tile < g.tiles; tile += gridDim.x) {
    if (tid == 0) blur_phase_setup<T>(a, g, tile, smem);
    __syncthreads();
    const int tx = t.tx, ty = t.ty;
    blur_phase_load<T, KR>(a, g, tx, ty, smem, tid);
    __syncthreads();
    blur_phase_width<T, KR>(g, tx, ty, smem, tid);
    __syncthreads();
    blur_phase_store<T, KR, E>(a, g, tx, ty, smem, tid);
    __syncthreads();  // the next tile overwrites the shared arrays
  }
}

template <typename T, int KR>
__global__ void __launch_bounds__(kThreads, blur_min_blocks<T, KR>()) mollify_blur_kernel(const MollifyArgs a,
                                                                                         const BlurGeom g) {
  blur_tiles<T, KR, void>(a, g);
}

// noise= with a blur: the runtime-radius tiles reading the caller's eps (stored as E) in phase 3.
template <typename T, typename E>
__global__ void __launch_bounds__(kThreads, blur_min_blocks<T, -1>()) mollify_blur_noise_in_tiled_kernel(
    const MollifyArgs a, const BlurGeom g) {
  blur_tiles<T, -1, E>(a, g);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) mollify_blur_direct_kernel(const MollifyArgs a, const BlurGeom g) {
  blur_direct_thread<T>(a, g, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                        static_cast<int64_t>(gridDim.x) * blockDim.x);
}

template <typename TI, typename TO>
__global__ void __launch_bounds__(kThreads) mollify_mapped_noise_kernel(const MollifyArgs a, const MapArgs m) {
  mapped_noise_thread<TI, TO>(a, m, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                              static_cast<int64_t>(gridDim.x) * blockDim.x);
}

// noise=: the caller's eps (stored as E), one thread per element, grid-stride.
template <typename T, typename E>
__global__ void __launch_bounds__(kThreads) mollify_noise_in_kernel(const MollifyArgs a) {
  noise_in_thread<T, E>(a, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                        static_cast<int64_t>(gridDim.x) * blockDim.x);
}

template <typename T, typename E>
__global__ void __launch_bounds__(kThreads) mollify_blur_noise_in_kernel(const MollifyArgs a) {
  blur_noise_in_thread<T, E>(a, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                             static_cast<int64_t>(gridDim.x) * blockDim.x);
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("mollify_cuda: ") + what + ": " + cudaGetErrorString(err));
}

template <typename T, bool kVec, bool kPerSample>
void launch_noise(const MollifyArgs& a, const LaunchPlan& p, cudaStream_t stream) {
  mollify_noise_kernel<T, kVec, kPerSample><<<static_cast<unsigned>(p.grid_x), kThreads, 0, stream>>>(a);
}

// A tiled blur kernel over the plan's grid, with its dynamic shared memory: above 48 KB a
// kernel must opt in to it (per device).
template <typename K>
void launch_tiled(K kernel, const MollifyArgs& a, const LaunchPlan& p, cudaStream_t stream) {
  if (p.smem_bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem_bytes)),
          "allowing the blur kernel its shared memory");
  kernel<<<static_cast<unsigned>(p.grid_x), kThreads, static_cast<size_t>(p.smem_bytes), stream>>>(a, p.geom);
}

// Resident blur blocks per SM (the kernel's launch bounds) times waves: 8 waves keep the tail
// of the last wave short while a block still runs several tiles on large inputs.
constexpr int64_t kBlurBlocksPerSM = 3 * 8;

template <typename T>
void launch(const MollifyArgs& a, int sms, cudaStream_t stream) {
  const LaunchPlan p = plan_launch<T>(a, kBlurBlocksPerSM * sms);
  switch (p.kind) {
    case KernelKind::kNoise:
      with_noise_variant(p, [&](auto vec, auto ps) {
        launch_noise<T, decltype(vec)::value, decltype(ps)::value>(a, p, stream);
      });
      check(cudaGetLastError(), "launching the noise kernel");
      break;
    case KernelKind::kBlurTiled:
      with_radius(p.kr, [&](auto tag) {
        constexpr int KR = decltype(tag)::value;
        launch_tiled(mollify_blur_kernel<T, KR>, a, p, stream);
      });
      check(cudaGetLastError(), "launching the blur + noise kernel");
      break;
    case KernelKind::kBlurDirect:
      mollify_blur_direct_kernel<T><<<static_cast<unsigned>(p.grid_x), kThreads, 0, stream>>>(a, p.geom);
      check(cudaGetLastError(), "launching the direct blur + noise kernel");
      break;
    case KernelKind::kNoiseIn:
    case KernelKind::kBlurNoiseIn:
    case KernelKind::kBlurNoiseInTiled:
      with_eps_type<T>(p.eps_compute, [&](auto* tag) {
        using E = std::remove_pointer_t<decltype(tag)>;
        if (p.kind == KernelKind::kNoiseIn) {
          mollify_noise_in_kernel<T, E><<<static_cast<unsigned>(p.grid_x), kThreads, 0, stream>>>(a);
        } else if (p.kind == KernelKind::kBlurNoiseIn) {
          mollify_blur_noise_in_kernel<T, E><<<static_cast<unsigned>(p.grid_x), kThreads, 0, stream>>>(a);
        } else {
          launch_tiled(mollify_blur_noise_in_tiled_kernel<T, E>, a, p, stream);
        }
      });
      check(cudaGetLastError(), "launching the noise= kernel");
      break;
  }
}

}  // namespace

void mollify_cuda(const MollifyArgs& a, uintptr_t stream_handle, int device) {
  if (a.numel == 0) return;
  int previous = -1;
  check(cudaGetDevice(&previous), "cudaGetDevice");
  if (previous != device) check(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  try {
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "reading the SM count");
    dispatch_float(a.dtype, "mollify_cuda", [&](auto t) { launch<decltype(t)>(a, sms, stream); });
  } catch (...) {
    if (previous != device) cudaSetDevice(previous);
    throw;
  }
  if (previous != device) check(cudaSetDevice(previous), "cudaSetDevice (restore)");
}

// The noise op with an input map (no blur): x of dtype code m.x_dtype (uint8 too), out of a.dtype.
void mollify_cuda_mapped(const MollifyArgs& a, const MapArgs& m, uintptr_t stream_handle, int device) {
  if (a.numel == 0) return;
  if (a.has_blur) throw std::invalid_argument("mollify_cuda_mapped: no blur (the map runs unfused there)");
  int previous = -1;
  check(cudaGetDevice(&previous), "cudaGetDevice");
  if (previous != device) check(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  try {
    const int64_t groups = (a.numel + 3) / 4;
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>((groups + kThreads - 1) / kThreads, kMaxNoiseBlocks));
    dispatch_input(m.x_dtype, "mollify_cuda_mapped", [&](auto xi) {
      dispatch_float(a.dtype, "mollify_cuda_mapped", [&](auto xo) {
        mollify_mapped_noise_kernel<decltype(xi), decltype(xo)><<<grid, kThreads, 0, stream>>>(a, m);
      });
    });
    check(cudaGetLastError(), "launching the mapped noise kernel");
  } catch (...) {
    if (previous != device) cudaSetDevice(previous);
    throw;
  }
  if (previous != device) check(cudaSetDevice(previous), "cudaSetDevice (restore)");
}

std::string cuda_runtime_info() {
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  return "CUDA runtime " + std::to_string(runtime / 1000) + "." + std::to_string((runtime % 1000) / 10);
}

}  // namespace mollify_fast

// CUDA kernels for mollify: the __global__ wrappers and their launches. The work itself (per
// thread and per block) is in mollify_cuda_kernels.cuh, shared with the host driver
// (csrc/mollify_cuda_host.cpp) that runs it on CPU tensors for CI; read that file's header for
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

#include "mollify_cuda_kernels.cuh"

namespace mollify_fast {
namespace {

// Grid-stride loop over counter groups (noise_thread holds the loop).
template <typename T, bool kVec, bool kPerSample>
__global__ void __launch_bounds__(kThreads) mollify_noise_kernel(const MollifyArgs a) {
  noise_thread<T, kVec, kPerSample>(a, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                                    static_cast<int64_t>(gridDim.x) * blockDim.x);
}

// One 32 x 32 tile per block (x: tile column, y: tile row), planes blockIdx.z, + gridDim.z, ...
// Four phases separated by barriers (the host driver runs them in the same order).
// At least 3 blocks (768 threads) per SM: <= 80 registers, no spills (4 blocks spilled 56-96 B). Each block waits at 4 barriers per
// tile, so it takes several resident blocks to keep the SM's loads in flight.
template <typename T, int KR>
__global__ void __launch_bounds__(kThreads, 3) mollify_blur_kernel(const MollifyArgs a, const BlurGeom g) {
  using A = typename Io<T>::acc;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* smem = reinterpret_cast<A*>(smem_raw);
  const int tid = threadIdx.x, tx = blockIdx.x, ty = blockIdx.y;
  for (int64_t plane = blockIdx.z; plane < g.planes; plane += gridDim.z) {
    if (tid == 0) blur_phase_setup<T>(a, g, plane, smem);
    __syncthreads();
    blur_phase_load<T, KR>(a, g, tx, ty, smem, tid);
    __syncthreads();
    blur_phase_width<T, KR>(g, tx, ty, smem, tid);
    __syncthreads();
    blur_phase_store<T, KR>(a, g, tx, ty, smem, tid);
    __syncthreads();  // the next plane overwrites the shared arrays
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) mollify_blur_direct_kernel(const MollifyArgs a, const BlurGeom g) {
  blur_direct_thread<T>(a, g, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                        static_cast<int64_t>(gridDim.x) * blockDim.x);
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("mollify_cuda: ") + what + ": " + cudaGetErrorString(err));
}

template <typename T, bool kVec, bool kPerSample>
void launch_noise(const MollifyArgs& a, const LaunchPlan& p, cudaStream_t stream) {
  mollify_noise_kernel<T, kVec, kPerSample><<<static_cast<unsigned>(p.grid_x), kThreads, 0, stream>>>(a);
}

template <typename T>
void launch(const MollifyArgs& a, cudaStream_t stream) {
  const LaunchPlan p = plan_launch<T>(a);
  switch (p.kind) {
    case KernelKind::kNoise:
      if (p.vec) {
        p.per_sample ? launch_noise<T, true, true>(a, p, stream) : launch_noise<T, true, false>(a, p, stream);
      } else {
        p.per_sample ? launch_noise<T, false, true>(a, p, stream) : launch_noise<T, false, false>(a, p, stream);
      }
      check(cudaGetLastError(), "launching the noise kernel");
      break;
    case KernelKind::kBlurTiled:
      with_radius(p.kr, [&](auto tag) {
        constexpr int KR = decltype(tag)::value;
        auto kernel = mollify_blur_kernel<T, KR>;
        // Above 48 KB a kernel must opt in to its dynamic shared memory (per device).
        if (p.smem_bytes > 48 * 1024)
          check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem_bytes)),
                "allowing the blur kernel its shared memory");
        const dim3 grid(static_cast<unsigned>(p.grid_x), static_cast<unsigned>(p.grid_y), static_cast<unsigned>(p.grid_z));
        kernel<<<grid, kThreads, static_cast<size_t>(p.smem_bytes), stream>>>(a, p.geom);
      });
      check(cudaGetLastError(), "launching the blur + noise kernel");
      break;
    case KernelKind::kBlurDirect:
      mollify_blur_direct_kernel<T><<<static_cast<unsigned>(p.grid_x), kThreads, 0, stream>>>(a, p.geom);
      check(cudaGetLastError(), "launching the direct blur + noise kernel");
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
    switch (a.dtype) {
      case kFloat16: launch<Half>(a, stream); break;
      case kBFloat16: launch<BF16>(a, stream); break;
      case kFloat32: launch<float>(a, stream); break;
      case kFloat64: launch<double>(a, stream); break;
      default: throw std::invalid_argument("mollify_cuda: unsupported dtype code");
    }
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

// CUDA kernels for mollify (CONTRACT sections 2-4), on the shared Philox stream (csrc/philox.h).
//
// One thread per counter group: it draws the 4 normals of logical elements 4g .. 4g+3 with one
// Philox call and writes those 4 outputs, so the noise is the stream's by construction and
// four normals come from each 10-round Philox (one call per output is ALU-bound; Triton's
// tl.randn4x makes the same choice). Contiguous float/half/bf16 tensors take a vector path:
// one 4-element load and store per thread when the 4 elements are aligned.
//
// The blur computes each output directly from the (2r+1)^2 mirrored neighbours with the
// separable weights (w_i * w_j), in float32 (float64 for double). It is exact and simple; it is
// not yet the shared-memory tiled kernel the benchmarks call for (see the project's issue on
// CUDA kernels: the tiled version needs a GPU session to tune and verify).
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "dtypes.h"
#include "mollify_args.h"
#include "philox.h"

namespace mollify_fast {
namespace {

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// Blurred value of x at (plane p, row h, column w): separable weights, mirrored borders.
template <typename T>
__device__ typename Io<T>::acc blur_at(const MollifyArgs& a, const T* x, int64_t plane_off, int64_t h, int64_t w,
                                       int64_t H, int64_t W, typename Io<T>::acc s, int64_t r) {
  using A = typename Io<T>::acc;
  const int hd = a.ndim - 2, wd = a.ndim - 1;
  if (s == A(0)) return Io<T>::load(x + plane_off + h * a.x_strides[hd] + w * a.x_strides[wd]);
  const A inv = A(1) / (A(2) * s * s);
  A norm = 0;
  for (int64_t k = -r; k <= r; ++k) norm += exp(-A(k * k) * inv);
  A acc = 0;
  for (int64_t i = -r; i <= r; ++i) {
    const T* row = x + plane_off + reflect_index(h + i, H) * a.x_strides[hd];
    A racc = 0;
    for (int64_t j = -r; j <= r; ++j)
      racc += exp(-A(j * j) * inv) * Io<T>::load(row + reflect_index(w + j, W) * a.x_strides[wd]);
    acc += exp(-A(i * i) * inv) * racc;
  }
  return acc / (norm * norm);
}

template <typename T, bool kContiguous>
__global__ void mollify_noise_kernel(const MollifyArgs a) {
  using A = typename Io<T>::acc;
  const int64_t groups = (a.numel + 3) / 4;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  T* noise = static_cast<T*>(a.noise);
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float z[4];
    normals4(a.seed, a.offset + static_cast<uint64_t>(g), z);
    const int64_t i0 = 4 * g;
    if (kContiguous && i0 + 4 <= a.numel && (i0 / a.sample_numel) == ((i0 + 3) / a.sample_numel)) {
      // All 4 in one sample: one aligned vector load and store (pointers checked on the host).
      const int64_t n = i0 / a.sample_numel;
      const A al = param<A>(a.alpha_p, a.alpha, n), sg = param<A>(a.sigma_p, a.sigma, n);
      const Vec4<T> xv = *reinterpret_cast<const Vec4<T>*>(x + i0);
      Vec4<T> ov;
#pragma unroll
      for (int k = 0; k < 4; ++k) Io<T>::store(&ov.v[k], al * Io<T>::load(&xv.v[k]) + sg * static_cast<A>(z[k]));
      *reinterpret_cast<Vec4<T>*>(out + i0) = ov;
      if (noise) {
        Vec4<T> nv;
#pragma unroll
        for (int k = 0; k < 4; ++k) Io<T>::store(&nv.v[k], static_cast<A>(z[k]));
        *reinterpret_cast<Vec4<T>*>(noise + i0) = nv;
      }
      continue;
    }
    for (int k = 0; k < 4; ++k) {
      const int64_t i = i0 + k;
      if (i >= a.numel) break;
      const int64_t n = i / a.sample_numel;
      const A al = param<A>(a.alpha_p, a.alpha, n), sg = param<A>(a.sigma_p, a.sigma, n);
      int64_t ox, oo, on;
      unravel_offsets(a, a.ndim, i, ox, oo, on);
      Io<T>::store(out + oo, al * Io<T>::load(x + ox) + sg * static_cast<A>(z[k]));
      if (noise) Io<T>::store(noise + on, static_cast<A>(z[k]));
    }
  }
}

template <typename T>
__global__ void mollify_blur_kernel(const MollifyArgs a) {
  using A = typename Io<T>::acc;
  const int hd = a.ndim - 2, wd = a.ndim - 1;
  const int64_t H = a.sizes[hd], W = a.sizes[wd];
  const int64_t planes = a.numel / (H * W);
  const int64_t planes_per_sample = a.rows_are_samples ? 1 : planes / a.batch;
  const int64_t groups = (a.numel + 3) / 4;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  T* noise = static_cast<T*>(a.noise);
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float z[4];
    normals4(a.seed, a.offset + static_cast<uint64_t>(g), z);
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * g + k;
      if (i >= a.numel) break;
      const int64_t w = i % W, h = (i / W) % H, p = i / (H * W);
      const int64_t n = a.rows_are_samples ? 0 : p / planes_per_sample;
      const int64_t ns = a.rows_are_samples ? h : n;
      const A bs = param<A>(a.blur_p, a.blur_sigma, n);
      const int64_t r = a.radius_p ? a.radius_p[n] : a.radius;
      // Plane offsets from the plane dims (all but the last two).
      int64_t px, po, pn;
      unravel_offsets(a, hd, p, px, po, pn);
      const A b = blur_at<T>(a, x, px, h, w, H, W, bs, r);
      const A al = param<A>(a.alpha_p, a.alpha, ns), sg = param<A>(a.sigma_p, a.sigma, ns);
      Io<T>::store(out + po + h * a.out_strides[hd] + w * a.out_strides[wd], al * b + sg * static_cast<A>(z[k]));
      if (noise) Io<T>::store(noise + pn + h * a.noise_strides[hd] + w * a.noise_strides[wd], static_cast<A>(z[k]));
    }
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("mollify_cuda: ") + what + ": " + cudaGetErrorString(err));
}

bool contiguous_aligned(const MollifyArgs& a, size_t elem) {
  if (a.ndim != 1 || a.x_strides[0] != 1 || a.out_strides[0] != 1) return false;
  if (a.noise && a.noise_strides[0] != 1) return false;
  const uintptr_t align = 4 * elem;
  return reinterpret_cast<uintptr_t>(a.x) % align == 0 && reinterpret_cast<uintptr_t>(a.out) % align == 0 &&
         (!a.noise || reinterpret_cast<uintptr_t>(a.noise) % align == 0);
}

template <typename T>
void launch(const MollifyArgs& a, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t groups = (a.numel + 3) / 4;
  // Grid-stride loops: cap the grid, enough blocks to fill any current GPU several times over.
  const int64_t blocks = std::min<int64_t>((groups + kThreads - 1) / kThreads, int64_t(1) << 16);
  if (a.has_blur) {
    mollify_blur_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  } else if (contiguous_aligned(a, sizeof(T))) {
    mollify_noise_kernel<T, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  } else {
    mollify_noise_kernel<T, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  }
  check(cudaGetLastError(), a.has_blur ? "launching the blur + noise kernel" : "launching the noise kernel");
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

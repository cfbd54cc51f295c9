// The arguments every compiled mollify kernel takes: raw pointers, sizes, strides (in
// elements), and parameters. The Python launcher fills this after validating everything, so
// the extension never links against libtorch and builds once for torch 2.11 to 2.14.
#pragma once

#include <stdint.h>

#include "philox.h"  // MF_HD

namespace mollify_fast {

constexpr int kMaxDims = 8;

enum DType : int32_t { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

struct MollifyArgs {
  int32_t dtype;
  // Noise op: dims coalesced across x, out and noise (logical row-major order preserved).
  // Blur op: dims [planes..., H, W]; the plane dims are coalesced, H and W kept.
  int32_t ndim;
  int64_t sizes[kMaxDims];
  int64_t x_strides[kMaxDims];
  int64_t out_strides[kMaxDims];
  int64_t noise_strides[kMaxDims];
  const void* x;
  void* out;
  void* noise;  // nullptr: not requested
  int64_t numel;
  int64_t batch;        // x.shape[0]: per-sample parameters have this many values
  int64_t sample_numel; // numel / batch: logical elements per sample
  // Parameters: a scalar, or (when the pointer is set) one value per sample in the compute
  // dtype (double for float64 input, float otherwise), on the tensor's device.
  double sigma, alpha, blur_sigma;
  const void* sigma_p;
  const void* alpha_p;
  const void* blur_p;
  int32_t has_blur;
  int32_t radius;           // used when radius_p is null
  const int32_t* radius_p;  // per-sample radii (int32), or null
  int32_t max_radius;
  // A 2-D input is one plane whose dim 0 (H) is the "batch" of per-sample sigma/alpha.
  int32_t rows_are_samples;
  uint64_t seed;
  uint64_t offset;
};

// Memory offsets in x, out and noise of row-major index `idx` over dims [0, ndims) of a.sizes
// (ndims = a.ndim for an element, fewer for a row or a plane).
MF_HD void unravel_offsets(const MollifyArgs& a, int ndims, int64_t idx, int64_t& ox, int64_t& oo, int64_t& on) {
  ox = oo = on = 0;
  for (int d = ndims - 1; d >= 0; --d) {
    const int64_t i = idx % a.sizes[d];
    idx /= a.sizes[d];
    ox += i * a.x_strides[d];
    oo += i * a.out_strides[d];
    on += i * a.noise_strides[d];
  }
}

}  // namespace mollify_fast

// The arguments every compiled mollify kernel takes: raw pointers, sizes, strides (in
// elements), and parameters. The Python launcher fills this after validating everything, so
// the extension never links against libtorch and builds once for torch 2.11 to 2.14.
#pragma once

#include <stdint.h>

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

}  // namespace mollify_fast

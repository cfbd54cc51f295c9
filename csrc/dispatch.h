// One dtype dispatch for the host entry points (in the style of ATen's AT_DISPATCH_* macros and
// flash-attention's static_switch.h): f(T{}) with T the storage type of a dtype code. A new
// storage dtype is one case here plus its Io<T> in dtypes.h. Host code only (it throws).
#pragma once

#include <stdint.h>

#include <stdexcept>
#include <string>

#include "dtypes.h"
#include "mollify_args.h"

namespace mollify_fast {
MF_ISA_BEGIN

// The output (and x) dtypes: float16, bfloat16, float32, float64.
template <typename F>
void dispatch_float(int32_t dtype, const char* who, F&& f) {
  switch (dtype) {
    case kFloat16: f(Half{}); return;
    case kBFloat16: f(BF16{}); return;
    case kFloat32: f(float{}); return;
    case kFloat64: f(double{}); return;
  }
  throw std::invalid_argument(std::string(who) + ": unsupported dtype code " + std::to_string(dtype));
}

// An input map's x (README, "The input map"): uint8 or a float dtype.
template <typename F>
void dispatch_input(int32_t dtype, const char* who, F&& f) {
  if (dtype == kUInt8) {
    f(uint8_t{});
    return;
  }
  dispatch_float(dtype, who, f);
}

MF_ISA_END
}  // namespace mollify_fast

// The C++ entry points of mollify_fast._C, declared once: bindings.cpp exposes them to Python;
// csrc/cpu_dispatch.cpp (the CPU kernels), kernels/mollify_cuda_host.cpp (the CUDA kernels' code
// run on the host) and kernels/mollify_cuda.cu (the GPU launches) define them, each including
// this header so that a definition that drifts from its declaration fails to compile.
#pragma once

#include <stdint.h>

#include <string>
#include <vector>

#include "mollify_args.h"

namespace mollify_fast {

// CPU kernels (csrc/cpu_dispatch.cpp): the instruction-set copy chosen at load time.
void mollify_cpu(const MollifyArgs& a, int num_threads);
void mollify_cpu_mapped(const MollifyArgs& a, const MapArgs& m, int num_threads);
int64_t set_parallel_grain(int64_t elements_per_thread);
int threads_for_call(int64_t numel, int max_threads);
std::string cpu_isa();
std::vector<std::string> cpu_isas();
std::vector<std::string> cpu_isas_compiled();
std::string set_cpu_isa(const std::string& name);

// The CUDA kernels' __host__ __device__ code on CPU memory (kernels/mollify_cuda_host.cpp,
// always built, no nvcc needed).
void mollify_cuda_emulated(const MollifyArgs& a);
void mollify_cuda_emulated_mapped(const MollifyArgs& a, const MapArgs& m);

#ifdef MOLLIFY_FAST_WITH_CUDA
// GPU launches on `stream` of `device` (kernels/mollify_cuda.cu).
void mollify_cuda(const MollifyArgs& a, uintptr_t stream, int device);
void mollify_cuda_mapped(const MollifyArgs& a, const MapArgs& m, uintptr_t stream, int device);
std::string cuda_runtime_info();
#endif

}  // namespace mollify_fast

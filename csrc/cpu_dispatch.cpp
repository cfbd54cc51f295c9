// Run-time choice of the CPU kernels' instruction set, and their thread count.
//
// csrc/mollify_cpu.cpp and csrc/normals_cpu.cpp are compiled once per instruction set
// (CMakeLists.txt): "baseline" (the wheel's stated baseline, x86-64-v2 by default), "avx2"
// (-march=x86-64-v3) and "avx512" (-march=x86-64-v4), each copy in its own namespace. The
// widest one this CPU runs is picked once, when the module loads; MOLLIFY_FAST_CPU_ISA (read by
// mollify_fast/backends/_native.py through set_cpu_isa) forces one. Every copy is compiled
// with -ffp-contract=off and no fast-math, so all give the same bits (tests/test_packaging.py).
// This file is compiled for the baseline only.
#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "entry_points.h"
#include "mollify_args.h"

namespace mollify_fast {

#define MF_DECLARE_ISA(ns) \
  namespace ns {           \
  void mollify_cpu(const MollifyArgs& a, int nthreads); \
  void mollify_cpu_mapped(const MollifyArgs& a, const MapArgs& m, int nthreads); \
  }
MF_DECLARE_ISA(isa_baseline)
#ifdef MOLLIFY_FAST_HAVE_AVX2
MF_DECLARE_ISA(isa_avx2)
#endif
#ifdef MOLLIFY_FAST_HAVE_AVX512
MF_DECLARE_ISA(isa_avx512)
#endif

namespace {

using Kernel = void (*)(const MollifyArgs&, int);
using MappedKernel = void (*)(const MollifyArgs&, const MapArgs&, int);

struct Isa {
  const char* name;
  Kernel kernel;
  bool (*runs_here)();
  MappedKernel mapped;
};

bool always() { return true; }
#if defined(__x86_64__) && (defined(MOLLIFY_FAST_HAVE_AVX2) || defined(MOLLIFY_FAST_HAVE_AVX512))
// libgcc's checks include the OS's support for the wider registers (XGETBV). The level names
// need gcc >= 12 or clang >= 16; older compilers check the features the kernels' code uses.
#if (defined(__clang__) && __clang_major__ >= 16) || (!defined(__clang__) && __GNUC__ >= 12)
bool has_v3() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("x86-64-v3");
}
bool has_v4() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("x86-64-v4");
}
#else
bool has_v3() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
         __builtin_cpu_supports("bmi2");
}
bool has_v4() {
  __builtin_cpu_init();
  return has_v3() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd");
}
#endif
#endif

// Narrowest first.
const std::vector<Isa>& compiled() {
  static const std::vector<Isa> isas = {
      {MOLLIFY_FAST_BASELINE_NAME, &isa_baseline::mollify_cpu, &always, &isa_baseline::mollify_cpu_mapped},
#ifdef MOLLIFY_FAST_HAVE_AVX2
      {"avx2", &isa_avx2::mollify_cpu, &has_v3, &isa_avx2::mollify_cpu_mapped},
#endif
#ifdef MOLLIFY_FAST_HAVE_AVX512
      {"avx512", &isa_avx512::mollify_cpu, &has_v4, &isa_avx512::mollify_cpu_mapped},
#endif
  };
  return isas;
}

const Isa* widest_supported() {
  const Isa* best = &compiled().front();
  for (const Isa& i : compiled())
    if (i.runs_here()) best = &i;
  return best;
}

std::atomic<const Isa*> g_isa{widest_supported()};

// Elements per thread below which another thread does not pay: waking an OpenMP worker costs
// ~5-15 us on the 2-core dev VM (a 16-element call took ~15 us with the team, ~1 us without),
// the time one thread needs for a few thousand noise elements. See threads_for_call(); tests
// lower it (set_parallel_grain) to run small inputs on several threads.
std::atomic<int64_t> g_per_thread{int64_t(1) << 14};

}  // namespace

// Threads for a call with `numel` elements and `max_threads` allowed: one per g_per_thread
// elements, at least 1, at most max_threads. Work items depend only on their index, so the
// result is the same for any count.
int threads_for_call(int64_t numel, int max_threads) {
  const int64_t t = numel / std::max<int64_t>(1, g_per_thread.load(std::memory_order_relaxed));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, std::max(1, max_threads))));
}

int64_t set_parallel_grain(int64_t elements_per_thread) {
  return g_per_thread.exchange(std::max<int64_t>(1, elements_per_thread));
}

void mollify_cpu(const MollifyArgs& a, int num_threads) {
  g_isa.load(std::memory_order_relaxed)->kernel(a, threads_for_call(a.numel, num_threads));
}

void mollify_cpu_mapped(const MollifyArgs& a, const MapArgs& m, int num_threads) {
  g_isa.load(std::memory_order_relaxed)->mapped(a, m, threads_for_call(a.numel, num_threads));
}

std::string cpu_isa() { return g_isa.load()->name; }

std::vector<std::string> cpu_isas() {
  std::vector<std::string> names;
  for (const Isa& i : compiled())
    if (i.runs_here()) names.push_back(i.name);
  return names;
}

std::vector<std::string> cpu_isas_compiled() {
  std::vector<std::string> names;
  for (const Isa& i : compiled()) names.push_back(i.name);
  return names;
}

std::string set_cpu_isa(const std::string& name) {
  const std::string previous = cpu_isa();
  if (name == "auto") {
    g_isa.store(widest_supported());
    return previous;
  }
  std::string known;
  for (const Isa& i : compiled()) {
    if (name == i.name) {
      if (!i.runs_here())
        throw std::invalid_argument("this CPU cannot run the " + name + " kernels; choose one of: auto, " +
                                    [] {
                                      std::string s;
                                      for (const std::string& n : cpu_isas()) s += (s.empty() ? "" : ", ") + n;
                                      return s;
                                    }());
      g_isa.store(&i);
      return previous;
    }
    known += (known.empty() ? "" : ", ") + std::string(i.name);
  }
  throw std::invalid_argument("unknown CPU instruction set '" + name + "'; this build has: auto, " + known);
}

}  // namespace mollify_fast

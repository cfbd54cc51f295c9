// pybind11 module mollify_fast._C: raw pointers, sizes and strides in; no libtorch.
//
// The Python launchers (mollify_fast/backends/mollify_cpu.py, mollify_cuda.py) validate every
// argument first; these functions only check what would otherwise crash (rank, dtype code).
// Nothing here touches CUDA at import: a CUDA build imports on a machine without a GPU.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <unistd.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "entry_points.h"
#include "mollify_args.h"

namespace py = pybind11;

namespace {

using mollify_fast::MollifyArgs;

void copy_dims(const std::vector<int64_t>& v, int64_t* dst, const char* name, size_t ndim) {
  if (v.size() != ndim) throw std::invalid_argument(std::string(name) + " must have one entry per dim");
  for (size_t i = 0; i < ndim; ++i) dst[i] = v[i];
}

// What changes from call to call: the data pointers, the scalar parameters and the stream.
void set_call(MollifyArgs& a, uintptr_t x, uintptr_t out, uintptr_t noise, double sigma, double alpha, uint64_t seed,
              uint64_t offset) {  // noise_in and stream stay: a layout's Args for the fast path has neither
  a.x = reinterpret_cast<const void*>(x);
  a.out = reinterpret_cast<void*>(out);
  a.noise = reinterpret_cast<void*>(noise);
  a.param_value[mollify_fast::kSigma] = sigma;
  a.param_value[mollify_fast::kAlpha] = alpha;
  a.seed = seed;
  a.offset = offset;
}

MollifyArgs make_args(int dtype, const std::vector<int64_t>& sizes, const std::vector<int64_t>& x_strides,
                      const std::vector<int64_t>& out_strides, const std::vector<int64_t>& noise_strides,
                      uintptr_t x, uintptr_t out, uintptr_t noise, int noise_in, int64_t numel, int64_t batch,
                      int64_t sample_numel, const std::vector<std::pair<double, uintptr_t>>& params,
                      bool has_blur, int radius, uintptr_t radius_p, int max_radius, uint64_t seed, uint64_t offset,
                      uintptr_t stream_words) {
  MollifyArgs a{};
  if (sizes.empty() || sizes.size() > static_cast<size_t>(mollify_fast::kMaxDims))
    throw std::invalid_argument("sizes must have 1 to 8 dims after coalescing");
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("dtype code must be 0..3");
  // [planes..., H, W]: the Python launcher keeps H and W and coalesces the plane dims of an x
  // with >= 3 dims, so a blur always has at least 3 dims here.
  if (has_blur && sizes.size() < 3) throw std::invalid_argument("blur needs x with at least 3 dims [N, ..., H, W]");
  if (batch <= 0) throw std::invalid_argument("batch must be positive");
  if (noise_in < mollify_fast::kNoiseOut || noise_in > mollify_fast::kNoiseInA)
    throw std::invalid_argument("noise_in must be 0 (write eps), 1 (read eps as x's dtype) or 2 (read eps in the compute dtype)");
  if (noise_in != mollify_fast::kNoiseOut && noise == 0) throw std::invalid_argument("noise_in needs a noise pointer");
  if (params.size() != static_cast<size_t>(mollify_fast::kNumParams))
    throw std::invalid_argument("params must hold one (value, pointer) pair per ParamIndex");
  a.dtype = dtype;
  a.noise_in = noise_in;
  a.ndim = static_cast<int32_t>(sizes.size());
  copy_dims(sizes, a.sizes, "sizes", sizes.size());
  copy_dims(x_strides, a.x_strides, "x_strides", sizes.size());
  copy_dims(out_strides, a.out_strides, "out_strides", sizes.size());
  copy_dims(noise_strides, a.noise_strides, "noise_strides", sizes.size());
  for (size_t i = 0; i < params.size(); ++i) {
    a.param_value[i] = params[i].first;
    a.param_ptr[i] = reinterpret_cast<const void*>(params[i].second);
  }
  set_call(a, x, out, noise, a.param_value[mollify_fast::kSigma], a.param_value[mollify_fast::kAlpha], seed, offset);
  a.numel = numel;
  a.batch = batch;
  a.sample_numel = sample_numel;
  a.has_blur = has_blur;
  a.radius = radius;
  a.radius_p = reinterpret_cast<const int32_t*>(radius_p);
  a.max_radius = max_radius;
  a.stream = reinterpret_cast<const int64_t*>(stream_words);  // 0: the stream is (seed, offset)
  return a;
}

// The one argument record of every entry point (README, "Backends and the build"): MollifyArgs
// (and, for a call with an input map, MapArgs), packed once from the Python launcher's
// positional list (mollify_fast/backends/_native.py, kernel_args: the one encoder of the call on
// the Python side). The fast path builds one per layout and each call passes only what changes
// (the three data pointers, the scalar parameters and the stream: with_call), which costs ~0.5 us
// in pybind11 against ~2.5 us for converting the whole list (two std::vector<int64_t> per
// tensor) on the 2-core dev VM.
struct Args {
  MollifyArgs a;
  mollify_fast::MapArgs map{};
  bool mapped = false;
};

MollifyArgs with_call(const Args& p, uintptr_t x, uintptr_t out, uintptr_t noise, double sigma, double alpha,
                      uint64_t seed, uint64_t offset) {
  MollifyArgs a = p.a;
  set_call(a, x, out, noise, sigma, alpha, seed, offset);
  return a;
}

// A generator's state (mollify_fast/generator.py): int64 words, KEY, OFFSET and OWNER first.
constexpr int kKeyWord = 0, kOffsetWord = 1, kOwnerWord = 2;

// Take the counter groups of a numel-element call from a generator state this process owns
// (OWNER == pid: its key is derived; or OWNER == -pid, a provisional key, when the caller says
// it still holds: no process group yet), in one atomic step: the offset advances by
// ceil(numel / 4) and (key, old offset) is the call's stream. False, with nothing changed, for
// any other state (another process's, a pending key): Python's take_stream then derives the
// key under its lock. Every advance of an owned state goes through this function (Python's
// too), so two takes never get the same groups, from any thread.
bool take_groups(uintptr_t state, int64_t numel, bool provisional_ok, uint64_t& seed, uint64_t& offset) {
  int64_t* s = reinterpret_cast<int64_t*>(state);
  const int64_t owner = __atomic_load_n(s + kOwnerWord, __ATOMIC_ACQUIRE), pid = static_cast<int64_t>(getpid());
  if (owner != pid && !(provisional_ok && owner == -pid)) return false;
  seed = static_cast<uint64_t>(__atomic_load_n(s + kKeyWord, __ATOMIC_RELAXED));
  offset = __atomic_fetch_add(reinterpret_cast<uint64_t*>(s + kOffsetWord), static_cast<uint64_t>((numel + 3) >> 2),
                              __ATOMIC_RELAXED);
  return true;
}

// The cpu plan path's two launch calls as plain CPython functions (METH_FASTCALL): the one call
// a training loop makes per step. With the caches cold after a training step, pybind11's
// dispatcher (overload lookup, type casters) costs several times a builtin's call; the figures
// are in the README, "Inside a training loop". Both take, positionally, the plan's address
// (Args.address; the caller keeps the plan alive), x, out, noise (addresses; noise 0: none),
// sigma, alpha, two stream words and num_threads.

// args[0..5] (plan address, x, out, noise, sigma, alpha) into a call on that plan with stream
// (0, 0); false with a Python error set.
bool parse_plan_call(PyObject* const* args, Py_ssize_t nargs, const char* name, const Args*& plan, MollifyArgs& a) {
  if (nargs != 9) {
    PyErr_Format(PyExc_TypeError, "%s takes 9 positional arguments, got %zd", name, nargs);
    return false;
  }
  uintptr_t ptr[4];  // plan, x, out, noise
  for (int i = 0; i < 4; ++i) {
    ptr[i] = static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(args[i]));
    if (PyErr_Occurred()) return false;
  }
  const double sigma = PyFloat_AsDouble(args[4]), alpha = PyFloat_AsDouble(args[5]);
  if (PyErr_Occurred()) return false;
  plan = reinterpret_cast<const Args*>(ptr[0]);
  a = with_call(*plan, ptr[1], ptr[2], ptr[3], sigma, alpha, 0, 0);
  return true;
}

// The cpu noise kernel on `a` without the GIL; Py_True, or nullptr with the kernel's error set
// (ValueError for std::invalid_argument, RuntimeError otherwise, as pybind11 maps them).
PyObject* run_cpu_raw(const MollifyArgs& a, PyObject* num_threads_arg) {
  const long num_threads = PyLong_AsLong(num_threads_arg);
  if (PyErr_Occurred()) return nullptr;
  std::string error;
  bool invalid = false;
  Py_BEGIN_ALLOW_THREADS
  try {
    mollify_fast::mollify_cpu(a, static_cast<int>(num_threads));
  } catch (const std::invalid_argument& e) {
    error = e.what();
    invalid = true;
  } catch (const std::exception& e) {
    error = e.what();
  }
  Py_END_ALLOW_THREADS
  if (!error.empty()) {
    PyErr_SetString(invalid ? PyExc_ValueError : PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  Py_RETURN_TRUE;
}

// (plan, x, out, noise, sigma, alpha, seed, offset, num_threads): the stream by value.
PyObject* cpu_plan_raw(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  const Args* plan;
  MollifyArgs a;
  if (!parse_plan_call(args, nargs, "mollify_cpu_plan", plan, a)) return nullptr;
  a.seed = PyLong_AsUnsignedLongLong(args[6]);
  a.offset = PyLong_AsUnsignedLongLong(args[7]);
  if (PyErr_Occurred()) return nullptr;
  return run_cpu_raw(a, args[8]);
}

// (plan, x, out, noise, sigma, alpha, state_ptr, group_probe, num_threads): the stream taken
// from a generator state (take_groups) in the launch call itself, which saves the ten or so
// Python steps of take_stream (each ~1-3 us with cold caches); False, with nothing done, where
// take_groups refuses. group_probe (generator.default_group) is asked only for a provisional
// stream (OWNER == -pid): a dict, whose "_default_pg" entry is torch.distributed's default
// process group, or a callable returning whether there is one. No group yet (the entry None or
// absent, the callable's result None or False) lets that stream draw as it is.
PyObject* cpu_plan_gen_raw(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  const Args* plan;
  MollifyArgs a;
  if (!parse_plan_call(args, nargs, "mollify_cpu_plan_gen", plan, a)) return nullptr;
  const uintptr_t state = static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(args[6]));
  if (PyErr_Occurred()) return nullptr;
  bool provisional_ok = false;
  if (__atomic_load_n(reinterpret_cast<int64_t*>(state) + kOwnerWord, __ATOMIC_ACQUIRE) ==
      -static_cast<int64_t>(getpid())) {
    if (PyDict_CheckExact(args[7])) {
      static PyObject* const key = PyUnicode_InternFromString("_default_pg");
      PyObject* group = key ? PyDict_GetItemWithError(args[7], key) : nullptr;  // borrowed
      if (!group && PyErr_Occurred()) return nullptr;
      provisional_ok = !group || group == Py_None;
    } else {
      PyObject* group = PyObject_CallNoArgs(args[7]);
      if (!group) return nullptr;
      provisional_ok = group == Py_None || group == Py_False;
      Py_DECREF(group);
    }
  }
  if (!take_groups(state, plan->a.numel, provisional_ok, a.seed, a.offset)) Py_RETURN_FALSE;
  return run_cpu_raw(a, args[8]);
}

PyMethodDef cpu_plan_defs[] = {
    {"mollify_cpu_plan", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(cpu_plan_raw)),
     METH_FASTCALL,
     "mollify_cpu on a layout's Args: (plan_address, x, out, noise, sigma, alpha, seed, offset, num_threads), "
     "positional"},
    {"mollify_cpu_plan_gen", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(cpu_plan_gen_raw)),
     METH_FASTCALL,
     "mollify_cpu_plan taking its stream from a generator state: (plan_address, x, out, noise, sigma, alpha, "
     "state_ptr, group_probe, num_threads), positional; False (nothing done) when the state is not this "
     "process's derived stream, nor a provisional one while group_probe shows no process group"},
};

}  // namespace

namespace {
mollify_fast::MapArgs make_map(int x_dtype, double scale, double shift, bool dequant) {
  if (x_dtype < 0 || x_dtype > mollify_fast::kUInt8) throw std::invalid_argument("x dtype code must be 0..4");
  return mollify_fast::MapArgs{x_dtype, scale, shift, dequant ? 1 : 0};
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mollify_fast compiled kernels (CPU, the CUDA kernels' host emulation, and CUDA when built with it)";
  py::class_<Args>(m, "Args",
                   "One call's kernel arguments (MollifyArgs, and MapArgs with an input map), packed once; every "
                   "entry point takes one. Built positionally from backends._native.kernel_args's list, then "
                   "optionally the input map (x dtype code, 4: uint8; scale; shift; dequant). A fast-path plan is "
                   "one built for a layout whose pointers, scalar parameters and stream each call replaces.")
      .def(py::init([](int dtype, const std::vector<int64_t>& sizes, const std::vector<int64_t>& xs,
                       const std::vector<int64_t>& os, const std::vector<int64_t>& ns, uintptr_t x, uintptr_t out,
                       uintptr_t noise, int noise_in, int64_t numel, int64_t batch, int64_t sample_numel,
                       const std::vector<std::pair<double, uintptr_t>>& params, bool has_blur, int radius,
                       uintptr_t radius_p, int max_radius, uint64_t seed, uint64_t offset, uintptr_t stream_words,
                       int x_dtype, double scale, double shift, bool dequant) {
             Args r{make_args(dtype, sizes, xs, os, ns, x, out, noise, noise_in, numel, batch, sample_numel, params,
                              has_blur, radius, radius_p, max_radius, seed, offset, stream_words)};
             if (x_dtype >= 0) {
               r.map = make_map(x_dtype, scale, shift, dequant);
               r.mapped = true;
             }
             return r;
           }),
           py::arg("dtype"), py::arg("sizes"), py::arg("x_strides"), py::arg("out_strides"), py::arg("noise_strides"),
           py::arg("x"), py::arg("out"), py::arg("noise"), py::arg("noise_in"), py::arg("numel"), py::arg("batch"),
           py::arg("sample_numel"), py::arg("params"), py::arg("has_blur"), py::arg("radius"), py::arg("radius_p"),
           py::arg("max_radius"), py::arg("seed"), py::arg("offset"), py::arg("stream_words"),
           py::arg("x_dtype") = -1, py::arg("scale") = 1.0, py::arg("shift") = 0.0, py::arg("dequant") = false)
      .def_property_readonly("ndim", [](const Args& p) { return p.a.ndim; })
      .def_property_readonly("numel", [](const Args& p) { return p.a.numel; })
      .def_property_readonly("mapped", [](const Args& p) { return p.mapped; })
      .def_property_readonly(
          "address", [](const Args& p) { return reinterpret_cast<uintptr_t>(&p); },
          "Where this Args lives, for mollify_cpu_plan and mollify_cpu_plan_gen (valid while the object is)");
  m.def(
      "mollify_cpu",
      [](const Args& p, int num_threads) {
        const Args c = p;
        py::gil_scoped_release release;
        if (c.mapped)
          mollify_fast::mollify_cpu_mapped(c.a, c.map, num_threads);
        else
          mollify_fast::mollify_cpu(c.a, num_threads);
      },
      py::arg("args"), py::arg("num_threads"),
      "The cpu kernels on an Args (with an input map: x of dtype code x_dtype, out and noise of `dtype`; no blur).");
  for (PyMethodDef& def : cpu_plan_defs)
    m.attr(def.ml_name) = py::reinterpret_steal<py::object>(PyCFunction_New(&def, nullptr));
  m.def(
      "take_stream",
      [](uintptr_t state, int64_t numel, bool provisional_ok) -> py::object {
        uint64_t seed, offset;
        if (!take_groups(state, numel, provisional_ok, seed, offset)) return py::none();
        return py::make_tuple(seed, offset);
      },
      py::arg("state_ptr"), py::arg("numel"), py::arg("provisional_ok"),
      "(key, offset) of a numel-element call, advancing the generator state at state_ptr atomically; None "
      "(nothing changed) when the state is not this process's derived stream");
  m.def("set_parallel_grain", &mollify_fast::set_parallel_grain, py::arg("elements_per_thread"),
        "Elements per OpenMP thread of the cpu kernels (default 16384); returns the previous value. For tests "
        "and tuning: the result does not depend on it.");
  m.def("cpu_isa", &mollify_fast::cpu_isa, "The instruction set the cpu kernels run with (baseline, avx2, avx512).");
  m.def("cpu_isas", &mollify_fast::cpu_isas, "The compiled instruction sets this CPU runs, narrowest first.");
  m.def("cpu_isas_compiled", &mollify_fast::cpu_isas_compiled, "Every compiled instruction set, narrowest first.");
  m.def("set_cpu_isa", &mollify_fast::set_cpu_isa, py::arg("name"),
        "Run the cpu kernels with one compiled instruction set (or 'auto': the widest this CPU runs); returns "
        "the previous one. Raises ValueError for a set that is not compiled or that this CPU cannot run. All "
        "give the same bits.");
  m.attr("cpu_baseline_arch") = MOLLIFY_FAST_BASELINE_ARCH;
#ifdef MOLLIFY_FAST_WITH_CUDA
  // CMAKE_CUDA_ARCHITECTURES of the build ("80-real;90": SASS for sm_80 and sm_90, PTX for sm_90)
  // and the CUDA toolkit it was built with: mollify_fast/backends/mollify_cuda.py checks the GPU
  // and the driver against them.
  m.attr("cuda_archs") = MOLLIFY_FAST_CUDA_ARCHS_STR;
  m.attr("cuda_toolkit_version") = MOLLIFY_FAST_CUDA_TOOLKIT_STR;
#endif
  m.def("threads_for", &mollify_fast::threads_for_call, py::arg("numel"), py::arg("max_threads"),
        "Threads the cpu kernels use for numel elements when max_threads are allowed.");
  // The CUDA kernels' code run on CPU tensors (kernels/mollify_cuda_host.cpp): built without nvcc too.
  m.def(
      "mollify_cuda_emulated",
      [](const Args& p) {
        const Args c = p;
        py::gil_scoped_release release;
        if (c.mapped)
          mollify_fast::mollify_cuda_emulated_mapped(c.a, c.map);
        else
          mollify_fast::mollify_cuda_emulated(c.a);
      },
      py::arg("args"));
#ifdef MOLLIFY_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def(
      "mollify_cuda",
      [](const Args& p, uintptr_t stream, int device) {
        if (p.mapped)
          mollify_fast::mollify_cuda_mapped(p.a, p.map, stream, device);
        else
          mollify_fast::mollify_cuda(p.a, stream, device);
      },
      py::arg("args"), py::arg("stream"), py::arg("device"));
  m.def(
      "mollify_cuda_plan",
      [](const Args& p, uintptr_t x, uintptr_t out, uintptr_t noise, double sigma, double alpha, uint64_t seed,
         uint64_t offset, uintptr_t stream, int device) {
        mollify_fast::mollify_cuda(with_call(p, x, out, noise, sigma, alpha, seed, offset), stream, device);
      },
      "mollify_cuda on a layout's Args: (args, x, out, noise, sigma, alpha, seed, offset, stream, device), positional");
  m.def(
      "mollify_cuda_plan_gen",
      [](const Args& p, uintptr_t x, uintptr_t out, uintptr_t noise, double sigma, double alpha, uintptr_t state,
         bool provisional_ok, uintptr_t stream, int device) {
        uint64_t seed, offset;
        if (!take_groups(state, p.a.numel, provisional_ok, seed, offset)) return false;
        mollify_fast::mollify_cuda(with_call(p, x, out, noise, sigma, alpha, seed, offset), stream, device);
        return true;
      },
      "mollify_cuda_plan taking its stream from a generator state (see mollify_cpu_plan_gen)");
  m.def("cuda_runtime_info", &mollify_fast::cuda_runtime_info);
#else
  m.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}

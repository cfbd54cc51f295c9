"""The ``cuda`` backend: CUDA C++ kernels (kernels/mollify_cuda.cu) built into ``mollify_fast._C``.

Launched on the tensor's device and PyTorch's current stream for it. The kernels take the same
raw arguments as the CPU ones (csrc/mollify_args.h): no libtorch link, one build for every
supported torch. Noise: one thread per Philox group writes the group's 4 outputs (vector load
and store on aligned contiguous tensors). Blur + noise: a tiled separable kernel (32 x 32
output tiles, mirrored halo in shared memory); it mirrors the border once, so it takes blur
radii below min(H, W) only (``backends.LIMITS``: mollify runs larger ones unfused, the folded
blur first, then this backend's noise kernel). Float64 is supported.

Host emulation, like Triton's interpreter: with ``MOLLIFY_FAST_CUDA_EMULATE=1`` (read at each
call) this backend also runs CPU tensors, through kernels/mollify_cuda_host.cpp, which executes
the kernels' own ``__host__ __device__`` code block by block (and phase by phase for the
blur's shared memory). It needs no GPU and no nvcc, is slow (one core), and exists so that
CI and users can check the CUDA code on a CPU. ``auto`` never picks it.

Errors: bad arguments and launch errors raise at the call; a fault inside a running kernel is
reported by CUDA at the next synchronising call, or at the call itself with
``MOLLIFY_FAST_CUDA_SYNC=1`` (synchronises the stream after each launch: for debugging).
"""
from __future__ import annotations

import functools
import os
import sys
from typing import List, Optional, Tuple, cast

import torch

from ..generator import provisional_ok
from .._call import Call, Params
from . import NoisePlan
from ._native import call_args, extension, make_plan, reading_eps

EMULATE_ENV = "MOLLIFY_FAST_CUDA_EMULATE"
SYNC_ENV = "MOLLIFY_FAST_CUDA_SYNC"
EMULATED = "emulated on the host: runs the CUDA kernels' code on CPU tensors"


def emulated() -> bool:
    """True when ``MOLLIFY_FAST_CUDA_EMULATE=1``: CPU tensors run the kernels' code on the host."""
    return os.environ.get(EMULATE_ENV, "").strip() == "1"


ARCHS_ENV = "MOLLIFY_FAST_CUDA_ARCHS"


def _archs(spec: str) -> Tuple[List[Tuple[int, str]], List[int]]:
    """CMAKE_CUDA_ARCHITECTURES of the build ("80-real;90", "," or ";" separated) as
    ``([(sm, suffix), ...] with SASS, [sm, ...] with PTX)``: "90" gives both, "90-real" SASS,
    "90-virtual" PTX; "90a" is SASS for exactly sm_90."""
    sass, ptx = [], []
    for item in spec.replace(",", ";").split(";"):
        item = item.strip()
        num, _, kind = item.partition("-")
        digits = "".join(ch for ch in num if ch.isdigit())
        if not digits:
            continue
        sm, suffix = int(digits), num[len(digits):]
        if kind in ("", "real"):
            sass.append((sm, suffix))
        if kind in ("", "virtual"):
            ptx.append(sm)
    return sass, ptx


def _version(text: str) -> Tuple[int, int]:
    parts = [int(p) for p in text.split(".")[:2] if p.isdigit()]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def driver_version() -> Optional[Tuple[int, int]]:
    """The CUDA version the installed driver supports, e.g. (13, 0), from libcuda's
    cuDriverGetVersion (no context is created); None where libcuda does not load."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return v.value // 1000, (v.value % 1000) // 10


def code_runs_on(archs: str, toolkit: str, capability: Tuple[int, int],
                 driver: Optional[Tuple[int, int]]) -> Tuple[bool, str]:
    """Can a build for ``archs`` (CMAKE_CUDA_ARCHITECTURES) with CUDA ``toolkit`` run on a GPU of
    compute ``capability`` under a driver supporting CUDA ``driver``? ``(ok, reason)``.

    SASS for sm_XY runs on compute capability X.Z with Z >= Y (sm_XYa on X.Y only); PTX for
    sm_XY is compiled by the driver for capability >= X.Y, which needs a driver at least as new
    as the toolkit. The statically linked runtime needs a driver of the toolkit's major version
    or newer. See README, "Backends and the build"."""
    cc = capability[0] * 10 + capability[1]
    tk = _version(toolkit)
    gpu = f"compute capability {capability[0]}.{capability[1]}"
    fix = (f"rebuild for it: `{ARCHS_ENV}=\"{capability[0]}{capability[1]}\" pip install --no-cache-dir "
           "--force-reinstall --no-binary mollify_fast mollify_fast` (or from a source checkout), with a CUDA "
           "toolkit this driver supports")
    if driver is not None and driver[0] < tk[0]:
        return False, (f"built with CUDA {tk[0]}.{tk[1]}, but the driver supports CUDA {driver[0]}.{driver[1]} only: "
                       f"update the NVIDIA driver to one for CUDA {tk[0]}.x, or {fix}")
    sass, ptx = _archs(archs)
    for sm, suffix in sass:
        if sm // 10 == cc // 10 and (sm == cc if suffix.startswith("a") else sm <= cc):
            return True, f"SASS for sm_{sm}{suffix}"
    runnable_ptx = [sm for sm in ptx if sm <= cc]
    if runnable_ptx:
        if driver is not None and driver < tk:
            return False, (f"only PTX (sm_{max(runnable_ptx)}) fits this GPU ({gpu}), and the driver (CUDA "
                           f"{driver[0]}.{driver[1]}) is older than the toolkit that wrote it (CUDA {tk[0]}.{tk[1]}): "
                           f"update the driver, or {fix}")
        return True, f"PTX for sm_{max(runnable_ptx)}, compiled by the driver at first use"
    built = ", ".join([f"SASS sm_{sm}{sf}" for sm, sf in sass] + [f"PTX sm_{sm}" for sm in ptx]) or archs
    return False, f"the build's code ({built}) cannot run on this GPU ({gpu}); {fix}"


@functools.lru_cache(maxsize=None)
def _device_check(index: int) -> Tuple[bool, str]:
    ext, _ = extension()
    name = torch.cuda.get_device_name(index)
    ok, why = code_runs_on(getattr(ext, "cuda_archs", "80-real;90"), getattr(ext, "cuda_toolkit_version", "13.0"),
                           cast(Tuple[int, int], tuple(torch.cuda.get_device_capability(index))), driver_version())
    return ok, why if ok else f"cuda:{index} ({name}): {why}"


def _gpu(index: Optional[int] = None) -> Tuple[bool, str]:
    ext, why = extension()
    if ext is None:
        return False, why
    if not ext.with_cuda:
        return False, ("the extension was built without CUDA (MOLLIFY_FAST_CUDA=off, or no nvcc at build time); "
                       "rebuild with nvcc on PATH")
    if not torch.cuda.is_available():
        return False, f"built with {ext.cuda_runtime_info()}, but no GPU is visible to torch"
    ok, how = _device_check(torch.cuda.current_device() if index is None else index)
    if not ok:
        return False, how
    return True, f"CUDA C++ kernels ({ext.cuda_runtime_info()}; {how})"


def availability() -> Tuple[bool, str]:
    ok, why = _gpu()
    if emulated() and extension()[0] is not None:
        return True, f"{EMULATED} ({EMULATE_ENV}=1); " + (why if ok else f"GPU: {why}")
    if not ok:
        return False, f"{why} (set {EMULATE_ENV}=1 to run the kernels' code on CPU tensors)"
    return ok, why


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    if x.device.type == "cuda":
        ok, why = _gpu(x.device.index if x.device.index is not None else torch.cuda.current_device())
        return ok, "" if ok else why
    if x.is_cpu and emulated():
        return True, ""
    return False, (f"the cuda backend runs CUDA tensors (or CPU tensors with {EMULATE_ENV}=1), "
                   f"x is on {x.device}")


def maps_input(x: torch.Tensor, out: torch.Tensor, p: Params) -> bool:
    """The noise kernel applies the input map itself (``mapped_noise_thread``); a blur with a
    map runs on the mapped temporary (``_op._run_mapped``)."""
    return p.blur_sigma is None


def mollify_cuda(call: Call) -> None:
    """Writes ``call.out`` (and ``call.noise``) in one pass; the caller's eps (``given_noise``) is
    read by the noise= kernels (kernels/mollify_cuda_kernels.cuh) in the same pass (never with an
    input map: mollify maps x into a temporary first)."""
    ext, _ = extension()
    x = call.x
    call = reading_eps(call)  # held until the kernel is launched (PyTorch's caching allocator orders its reuse)
    args = call_args(call)
    if x.is_cpu:
        ext.mollify_cuda_emulated(args)
        return
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    cuda_stream = torch.cuda.current_stream(dev)
    ext.mollify_cuda(args, cuda_stream.cuda_stream, dev)
    if os.environ.get(SYNC_ENV, "").strip() == "1" and not torch.cuda.is_current_stream_capturing():
        cuda_stream.synchronize()  # a fault in the kernel raises here, at the call (a capture cannot sync)


def noise_plan(call: Call):
    """A launcher for repeated noise-only calls on a CUDA x's layout (see ``_op._fast``; the
    registry asks only for CUDA tensors: ``Limits.plan_devices``).
    ``run(x, out, noise, sigma, alpha, (seed, offset))`` launches on PyTorch's current stream
    for x's device, read at each call through ``torch._C._cuda_getCurrentRawStream`` (what
    Inductor's launchers use; ``torch.cuda.current_stream()`` builds a Stream object per call)."""
    ext, _ = extension()
    cplan, launch, launch_gen = make_plan(call), ext.mollify_cuda_plan, ext.mollify_cuda_plan_gen
    x = call.x
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    raw_stream = torch._C._cuda_getCurrentRawStream

    def run(x, out, noise, sigma, alpha, stream):
        s = raw_stream(dev)
        launch(cplan, x.data_ptr(), out.data_ptr(), 0 if noise is None else noise.data_ptr(), sigma, alpha,
               stream[0], stream[1], s, dev)
        if os.environ.get(SYNC_ENV, "").strip() == "1":
            torch.cuda.current_stream(dev).synchronize()  # a fault in the kernel raises here, at the call

    def run_gen(x, out, noise, sigma, alpha, state_ptr, group):
        # As run, with the stream taken from the generator state inside the launch call (see the
        # cpu backend's noise_plan); False: nothing done. This pybind11 call takes the answer,
        # provisional_ok(), rather than `group` itself.
        s = raw_stream(dev)
        if not launch_gen(cplan, x.data_ptr(), out.data_ptr(), 0 if noise is None else noise.data_ptr(), sigma,
                          alpha, state_ptr, provisional_ok(), s, dev):
            return False
        if os.environ.get(SYNC_ENV, "").strip() == "1":
            torch.cuda.current_stream(dev).synchronize()
        return True

    return NoisePlan(run, run_gen)

"""The ``cuda`` backend: CUDA C++ kernels (kernels/mollify_cuda.cu) built into ``mollify_fast._C``.

Launched on the tensor's device and PyTorch's current stream for it. The kernels take the same
raw arguments as the CPU ones (csrc/mollify_args.h): no libtorch link, one build for every
supported torch. Noise: one thread per Philox group writes the group's 4 outputs (vector load
and store on aligned contiguous tensors). Blur + noise: a tiled separable kernel (32 x 32
output tiles, mirrored halo in shared memory); it mirrors the border once, so it needs the
blur radius below min(H, W) and refuses larger radii with a ValueError. Float64 is supported.

Host emulation, like Triton's interpreter: with ``MOLLIFY_FAST_CUDA_EMULATE=1`` (read at each
call) this backend also runs CPU tensors, through csrc/mollify_cuda_host.cpp, which executes
the kernels' own ``__host__ __device__`` code block by block (and phase by phase for the
blur's shared memory). It needs no GPU and no nvcc, is slow (one core), and exists so that
CI and users can check the CUDA code on a CPU. ``auto`` never picks it.

Errors: bad arguments and launch errors raise at the call; a fault inside a running kernel is
reported by CUDA at the next synchronising call, or at the call itself with
``MOLLIFY_FAST_CUDA_SYNC=1`` (synchronises the stream after each launch: for debugging).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from .._validate import Params
from ._native import extension, kernel_args, make_plan

EMULATE_ENV = "MOLLIFY_FAST_CUDA_EMULATE"
SYNC_ENV = "MOLLIFY_FAST_CUDA_SYNC"
EMULATED = "emulated on the host: runs the CUDA kernels' code on CPU tensors"


def emulated() -> bool:
    """True when ``MOLLIFY_FAST_CUDA_EMULATE=1``: CPU tensors run the kernels' code on the host."""
    return os.environ.get(EMULATE_ENV, "").strip() == "1"


def _gpu() -> Tuple[bool, str]:
    ext, why = extension()
    if ext is None:
        return False, why
    if not ext.with_cuda:
        return False, ("the extension was built without CUDA (MOLLIFY_FAST_CUDA=off, or no nvcc at build time); "
                       "rebuild with nvcc on PATH")
    if not torch.cuda.is_available():
        return False, f"built with {ext.cuda_runtime_info()}, but no GPU is visible to torch"
    return True, f"CUDA C++ kernels ({ext.cuda_runtime_info()})"


def availability() -> Tuple[bool, str]:
    ok, why = _gpu()
    if emulated() and extension()[0] is not None:
        return True, f"{EMULATED} ({EMULATE_ENV}=1); " + (why if ok else f"GPU: {why}")
    if not ok:
        return False, f"{why} (set {EMULATE_ENV}=1 to run the kernels' code on CPU tensors)"
    return ok, why


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    if x.device.type == "cuda":
        ok, why = _gpu()
        return ok, "" if ok else why
    if x.is_cpu and emulated():
        return True, ""
    return False, (f"the cuda backend runs CUDA tensors (or CPU tensors with {EMULATE_ENV}=1), "
                   f"x is on {x.device}")


def mollify_cuda(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor], p: Params, stream) -> None:
    ext, _ = extension()
    if x.is_cpu:
        ext.mollify_cuda_emulated(*kernel_args(x, out, noise, p, stream))
        return
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    cuda_stream = torch.cuda.current_stream(dev)
    ext.mollify_cuda(*kernel_args(x, out, noise, p, stream), cuda_stream.cuda_stream, dev)
    if os.environ.get(SYNC_ENV, "").strip() == "1":
        cuda_stream.synchronize()  # a fault in the kernel raises here, at the call


def noise_plan(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor]):
    """A launcher for repeated noise-only calls on a CUDA x's layout (see ``mollify._fast``), or
    None (CPU tensors: the host emulation reads its environment variable at each call).
    ``run(x, out, noise, sigma, alpha, (seed, offset))`` launches on PyTorch's current stream
    for x's device, read at each call through ``torch._C._cuda_getCurrentRawStream`` (what
    Inductor's launchers use; ``torch.cuda.current_stream()`` builds a Stream object, ~2 us)."""
    if x.device.type != "cuda":
        return None
    ext, _ = extension()
    cplan, launch = make_plan(x, out, noise), ext.mollify_cuda_plan
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    raw_stream = torch._C._cuda_getCurrentRawStream

    def run(x, out, noise, sigma, alpha, stream):
        s = raw_stream(dev)
        launch(cplan, x.data_ptr(), out.data_ptr(), 0 if noise is None else noise.data_ptr(), sigma, alpha,
               stream[0], stream[1], s, dev)
        if os.environ.get(SYNC_ENV, "").strip() == "1":
            torch.cuda.current_stream(dev).synchronize()  # a fault in the kernel raises here, at the call

    return run

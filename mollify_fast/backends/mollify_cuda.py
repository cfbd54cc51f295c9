"""The ``cuda`` backend: CUDA C++ kernels (kernels/mollify_cuda.cu) built into ``mollify_fast._C``.

Launched on the tensor's device and PyTorch's current stream for it. The kernels take the same
raw arguments as the CPU ones (csrc/mollify_args.h): no libtorch link, one build for every
supported torch. One thread per Philox group writes the group's 4 outputs (vector load and
store on contiguous tensors). Float64 is supported.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._validate import Params
from ._native import extension, kernel_args


def availability() -> Tuple[bool, str]:
    ext, why = extension()
    if ext is None:
        return False, why
    if not ext.with_cuda:
        return False, ("the extension was built without CUDA (MOLLIFY_FAST_CUDA=off, or no nvcc at build time); "
                       "rebuild with nvcc on PATH")
    if not torch.cuda.is_available():
        return False, f"built with {ext.cuda_runtime_info()}, but no GPU is visible to torch"
    return True, f"CUDA C++ kernels ({ext.cuda_runtime_info()})"


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    if x.device.type != "cuda":
        return False, f"the cuda backend runs CUDA tensors, x is on {x.device}"
    return True, ""


def mollify_cuda(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor], p: Params, stream) -> None:
    ext, _ = extension()
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    ext.mollify_cuda(*kernel_args(x, out, noise, p, stream), torch.cuda.current_stream(dev).cuda_stream, dev)

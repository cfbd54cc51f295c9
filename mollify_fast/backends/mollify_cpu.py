"""The ``cpu`` backend: fused C++ kernels (csrc/mollify_cpu.cpp) on CPU tensors, with OpenMP.

One pass per call: the Philox normals of a segment are drawn into a thread-local buffer
(vectorised, csrc/normals_cpu.cpp), then x is read once and out written once. The blur is
separable over bands of rows with mirrored halos. Work items depend only on their index, so
results are identical for any thread count (``torch.get_num_threads()`` is used).
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
    return True, "C++ extension" + (" with OpenMP" if ext.with_openmp else " (no OpenMP: one thread)")


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    if not x.is_cpu:
        return False, f"the cpu backend runs CPU tensors, x is on {x.device}"
    return True, ""


def mollify_cpu(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor], p: Params, stream) -> None:
    ext, _ = extension()
    ext.mollify_cpu(*kernel_args(x, out, noise, p, stream), torch.get_num_threads())

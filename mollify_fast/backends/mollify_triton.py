"""The ``triton`` backend: fused Triton kernels for noise and blur + noise.

Runs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (how CI checks it without a
GPU; the variable must be set before this module is imported). float64 is not supported here
(``auto`` sends it to ``cuda`` or ``torch``). This module (and so Triton) is imported only when
the backend is first asked for; without Triton it reports itself unavailable with the error.
Works with Triton 3.6 to 3.8.

Host side: :func:`_plan` turns a call into a list of :class:`Launch` (kernel, grid, arguments,
constexprs, options) without touching a GPU; :func:`mollify_triton` runs them on ``x``'s
device and its current stream. Layout planning is cached per shape/strides/flags.

The code is in three modules that only this one imports (so neither they nor Triton load
before the backend is first asked for): ``_triton_kernels`` (the device code: ``@triton.jit``
helpers and the three kernels), ``_triton_plan`` (the launch plan: layouts, tiles,
:class:`Launch`, :func:`_plan`) and ``_triton_launch`` (running the launches, through Triton's
dispatcher or, with Triton's private API, the compiled kernel it returned). The names that tests
and tools read from this module are re-exported below; a test that patches one patches it in
the module that owns it.
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
import triton

from .._call import Call, Params
from ._triton_kernels import _mollify_blur_axis_kernel, _mollify_blur_kernel, _mollify_noise_kernel
from ._triton_launch import _arg_roles, _interpret, _kernel_layout, _launch, _spec_key
from ._triton_plan import BLUR_TILE_H, FUSED_MAX_RADIUS, THREADS, Launch, _blur_tiles, _plan, _plan_full


def availability() -> Tuple[bool, str]:
    if _interpret():
        return True, f"triton {triton.__version__} (TRITON_INTERPRET=1: runs CPU tensors, slowly)"
    if not torch.cuda.is_available():
        return False, f"triton {triton.__version__} is installed but no GPU is visible (set TRITON_INTERPRET=1 to run CPU tensors)"
    return True, f"triton {triton.__version__}"


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    if x.dtype == torch.float64:
        return False, "float64 is not supported by the triton backend; use backend='cuda', 'cpu' or 'torch'"
    want = "cpu" if _interpret() else "cuda"
    if x.device.type != want:
        return False, f"the triton backend runs {want} tensors here (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}), x is on {x.device}"
    return True, ""


def maps_input(x: torch.Tensor, out: torch.Tensor, p: Params) -> bool:
    """The noise kernel applies the input map itself (uint8 or floating x, float32 compute);
    a blur with a map runs on the mapped temporary (``_op._run_mapped``)."""
    return p.blur_sigma is None


def mollify_triton(call: Call) -> None:
    """Writes ``call.out`` (and ``call.noise``): the launches of :func:`_plan_full`."""
    x = call.x
    launches = _plan_full(call)
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        # Triton launches on the current device's current stream: make that x's device.
        with torch.cuda.device(x.device):
            _launch(launches, x.device.index)
    else:
        _launch(launches, x.device.index)

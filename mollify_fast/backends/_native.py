"""Shared by the ``cpu`` and ``cuda`` launchers: loading ``mollify_fast._C`` and turning a
validated call into the raw arguments of its kernels (csrc/mollify_args.h)."""
from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from types import FrameType
from typing import List, Optional, Tuple, Union

import torch

from .._call import PER_SAMPLE, Call, Params
from .._validate import compute_dtype
from ..generator import DeviceStream
from . import NATIVE_DIMS

DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
X_DTYPE_CODES = {**DTYPE_CODES, torch.uint8: 4}  # x of a call with an input map (csrc/mollify_args.h)
MAX_DIMS = NATIVE_DIMS  # the kernels' index arrays (csrc/mollify_args.h kMaxDims)


ISA_ENV = "MOLLIFY_FAST_CPU_ISA"
STATUS_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "_build_status.json")
REINSTALL = ("install a C++17 compiler (g++ or clang++) with OpenMP, and CMake >= 3.18 (or let pip fetch it), "
             "then reinstall without pip's wheel cache, which otherwise hands back the wheel built without "
             "it: `pip install --no-cache-dir --force-reinstall mollify_fast` (or, from a source checkout, "
             "`pip install --no-cache-dir --force-reinstall .`); `python -m mollify_fast info` shows the result")


class ExtensionMissingWarning(UserWarning):
    """Warned once per process, at the first call that needs the compiled extension
    (``mollify_fast._C``) and finds it missing: ``auto`` then runs the ``torch`` backend."""


def build_status() -> Optional[dict]:
    """The build's record (``mollify_fast/_build_status.json``, shipped in the wheel), or None."""
    try:
        with open(STATUS_FILE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _missing_reason(error: BaseException) -> str:
    st = build_status()
    if st is not None and not st.get("built", False):
        return f"the compiled extension was not built when this package was installed ({st.get('reason')}); " \
               f"to get it, {REINSTALL}"
    if st is not None:
        return f"the compiled extension was built but does not import ({type(error).__name__}: {error}); {REINSTALL}"
    return (f"the compiled extension is missing ({type(error).__name__}: {error}); in a source checkout build it "
            f"with `pip install -e .`; for an installed package, {REINSTALL}")


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside mollify_fast and torch: the user's call."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    skip = (pkg, os.path.dirname(os.path.abspath(torch.__file__)))
    frame: Optional[FrameType]
    frame, level = sys._getframe(1), 1  # the caller, extension(), is stacklevel 1 of its warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


@functools.lru_cache(maxsize=None)
def extension():
    """``(module, None)`` or ``(None, reason)``; imports nothing CUDA-related.

    The first time the extension is found missing, warns :class:`ExtensionMissingWarning` with
    the reason and the fix (see README, "Backends and the build"). ``MOLLIFY_FAST_CPU_ISA``
    (auto, baseline, avx2, avx512) picks the CPU kernels' instruction set; one this build or
    CPU lacks makes the extension unavailable, with the reason."""
    try:
        from .. import _C  # noqa: F401
    except ImportError as e:
        why = _missing_reason(e)
        warnings.warn(f"mollify_fast: {why}. Until then `backend='auto'` runs the slower pure-PyTorch backend "
                      "'torch' where it would run 'cpu' or 'cuda'.", ExtensionMissingWarning,
                      stacklevel=_caller_stacklevel())
        return None, why
    isa = os.environ.get(ISA_ENV, "").strip().lower()
    if isa:
        try:
            _C.set_cpu_isa(isa)
        except ValueError as e:
            return None, f"{ISA_ENV}={isa!r} cannot be used: {e}; unset it or pick one of those"
    return _C, None


def coalesce(shape: List[int], strides: List[List[int]]) -> Tuple[List[int], List[List[int]]]:
    """Merge adjacent dims that are contiguous with each other in every tensor, and drop size-1
    dims. Logical row-major order is unchanged, so element indices and the noise are too."""
    dims = [d for d in range(len(shape)) if shape[d] != 1] or [len(shape) - 1]
    sizes = [shape[dims[0]]]
    strd = [[s[dims[0]]] for s in strides]
    for d in dims[1:]:
        if all(st[-1] == s[d] * shape[d] for st, s in zip(strd, strides)):
            sizes[-1] *= shape[d]
            for st, s in zip(strd, strides):
                st[-1] = s[d]
        else:
            sizes.append(shape[d])
            for st, s in zip(strd, strides):
                st.append(s[d])
    return sizes, strd


def merged(shape, strides, blur: bool) -> Tuple[List[int], List[List[int]]]:
    """:func:`coalesce` of one call's layout (``strides``: one sequence per tensor): every dim,
    or with a blur the plane dims in front of H and W, which stay as they are (not returned)."""
    if blur:
        assert len(shape) >= 3, "mollify validates a blur's rank (>= 3 dims) before any backend"
        return coalesce(list(shape[:-2]), [list(s[:-2]) for s in strides])
    return coalesce(list(shape), [list(s) for s in strides])


def _value_ptr(v) -> Tuple[float, int]:
    """A parameter as the kernels take it, (value, pointer): (0.0, address) for a per-sample
    tensor, (value, 0) for a number, (0.0, 0) for None."""
    if isinstance(v, torch.Tensor):
        return 0.0, v.data_ptr()
    return 0.0 if v is None else float(v), 0


@functools.lru_cache(maxsize=256)
def _layout(shape: Union[Tuple[int, ...], List[int]], strides: Union[Tuple[Tuple[int, ...], ...], List[List[int]]],
            has_blur: bool):
    """Kernel sizes and per-tensor strides for one layout (cached: training loops repeat them)."""
    sizes, st = merged(shape, strides, has_blur)
    if has_blur:  # H and W follow the merged plane dims, as they are
        sizes = sizes + list(shape[-2:])
        st = [ls + list(s[-2:]) for ls, s in zip(st, strides)]
    if len(sizes) > MAX_DIMS:
        raise ValueError(f"mollify: x has {len(sizes)} non-mergeable dims; at most {MAX_DIMS} are supported "
                         "(pass x.contiguous())")
    return sizes, st


def eps_input(x: torch.Tensor, eps: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """The caller's eps (mollify's ``noise=``) as the kernels read it, and its ``noise_in`` code
    (csrc/mollify_args.h): as is in x's dtype (1) or in the compute dtype (2, float32 for
    float16/bfloat16 x); any other dtype is converted once, to the compute dtype, never rounded
    to x's dtype first (a float32 eps with bfloat16 x keeps its float32 values)."""
    if eps.dtype == x.dtype:
        return eps, 1
    acc = compute_dtype(x.dtype)
    return (eps if eps.dtype == acc else eps.to(acc)), 2


def reading_eps(call: Call) -> Call:
    """The call with the caller's eps (``given_noise``) in a dtype the kernels read
    (:func:`eps_input`). A launcher holds the result while its kernels run: the arguments carry
    only the converted tensor's address."""
    if call.given_noise is None:
        return call
    eps, _ = eps_input(call.x, call.given_noise)
    return call if eps is call.given_noise else call.replace(given_noise=eps)


def kernel_args(call: Call) -> tuple:
    """The positional arguments of ``_C.Args`` for one call, up to ``stream_words`` (the address
    of a :class:`DeviceStream`'s words, else 0) (positional: pybind11's keyword matching of 18
    arguments costs more than the call itself). The per-sample parameters go as one list of
    ``(value, pointer)`` pairs in :data:`PER_SAMPLE` order (the C++ ``ParamIndex``). The caller's
    eps (``call.given_noise``, already in a dtype the kernels read: :func:`reading_eps`) takes
    the noise slot with its code from :func:`eps_input` (``noise_in``; 0: ``call.noise``, if any,
    is written); the stream is then not used."""
    x, out, p, stream = call.x, call.target, call.resolved, call.rng
    noise, noise_in = call.noise, 0
    if call.given_noise is not None:
        noise, noise_in = eps_input(x, call.given_noise)
        assert noise is call.given_noise, "the launcher converts the eps (reading_eps) and holds it while the kernel runs"
    if isinstance(stream, DeviceStream):  # read by the kernel from the stream's words (README, "CUDA graphs")
        seed, offset, words = 0, 0, stream.words.data_ptr()
    else:
        assert stream is not None, "only the torch backend draws from PyTorch's RNG (stream None)"
        seed, offset = stream
        words = 0
    tensors = (x, out) if noise is None else (x, out, noise)
    has_blur = p.blur_sigma is not None
    sizes, strides = _layout(tuple(x.shape), tuple(t.stride() for t in tensors), has_blur)
    numel = x.numel()
    batch = x.shape[0]
    rad, rad_p = _value_ptr(p.radius)
    return (
        DTYPE_CODES[out.dtype],  # x's, except with an input map (then X_DTYPE_CODES[x.dtype] follows)
        sizes,
        strides[0],
        strides[1],
        strides[2] if noise is not None else [0] * len(sizes),
        x.data_ptr(),
        out.data_ptr(),
        0 if noise is None else noise.data_ptr(),
        noise_in,
        numel,
        batch,
        numel // batch,
        [_value_ptr(getattr(p, name)) for name in PER_SAMPLE],
        has_blur,
        int(rad),
        rad_p,
        int(p.max_radius),
        int(seed),
        int(offset),
        words,
    )


def call_args(call: Call):
    """The call's ``_C.Args`` (the one record every C++ entry point takes): :func:`kernel_args`,
    and the input map when the call has one (x's dtype code, scale, shift, dequant)."""
    ext, _ = extension()
    x, out, p = call.x, call.target, call.resolved
    args = kernel_args(call)
    if p.maps(x, out):
        assert call.given_noise is None, "an input map with the caller's eps runs on the mapped temporary"
        return ext.Args(*args, X_DTYPE_CODES[x.dtype], p.in_scale, p.in_shift, p.dequant)
    return ext.Args(*args)


# Placeholder numbers: a layout's Args keeps only what the layout fixes; each call passes its own.
_LAYOUT_ONLY = Params(sigma=0.0, alpha=0.0, blur_sigma=None, radius=0, max_radius=0)


def make_plan(call: Call):
    """``_C.Args`` of the noise op on the layout of ``call`` (its x, out and noise), for the fast path: everything but the data
    pointers, the scalar parameters and the stream, which each call passes (``_C.mollify_cpu_plan``
    and ``_C.mollify_cuda_plan``). Raises like :func:`kernel_args` (more than ``MAX_DIMS`` dims)."""
    ext, _ = extension()
    return ext.Args(*kernel_args(call.replace(given_noise=None, params=_LAYOUT_ONLY, rng=(0, 0))))

"""The ``reference`` pseudo-backend: :mod:`mollify_fast.reference` behind the backend API.

Exact and slow (it runs on the CPU and copies the result to x's device); for tests and for
checking a kernel by hand: ``mollify(x, s, backend="reference")``.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import reference
from .._call import PER_SAMPLE, Call, Params


def availability() -> Tuple[bool, str]:
    return True, "pure PyTorch (exact, slow)"


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    return True, ""


def maps_input(x: torch.Tensor, out: torch.Tensor, params: Params) -> bool:
    return True  # reference.mollify defines the input map


def _cpu(v):
    return v.cpu() if torch.is_tensor(v) else v


def mollify_reference(call: Call) -> None:
    """The caller's eps (``call.given_noise``, mollify's ``noise=``) is read, not written, and no
    stream is used."""
    x, out, noise, given, p = call.x, call.target, call.noise, call.given_noise, call.resolved
    if given is not None:
        seed, offset = 0, 0
    else:
        assert call.rng is not None, "only the torch backend draws from PyTorch's RNG (stream None)"
        seed, offset = call.rng
    res = reference.mollify(
        x,
        **{name: _cpu(getattr(p, name)) for name in PER_SAMPLE},  # reference.mollify's names
        blur_radius=_cpu(p.radius) if p.blur_sigma is not None else None,
        seed=seed,
        offset=offset,
        return_noise=True,
        input_scale=p.in_scale,
        input_shift=p.in_shift,
        dequantize=p.dequant,
        out_dtype=out.dtype,
        noise=given,
    )
    out.copy_(res[0])
    if noise is not None:
        noise.copy_(res[1])

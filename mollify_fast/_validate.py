"""Argument checking for ``mollify`` (CONTRACT section 7).

Two stages, both before anything is written:

* :func:`check_static` runs in the public function and uses only types, shapes, dtypes and
  devices, plus the values of plain Python numbers, so it is traceable by ``torch.compile``.
* :func:`resolve_params` runs inside the custom op's eager implementation and checks the
  *values* of tensor parameters (finite, in range), then puts every parameter in the form
  the kernels take (:class:`Params`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Param = Union[float, torch.Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic dtype: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_x(x, name: str = "x") -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"mollify: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"mollify: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}; "
            f"convert it first, e.g. {name}.float()"
        )
    if x.dim() < 1:
        raise ValueError(f"mollify: {name} must have at least 1 dim (dim 0 is the batch), got a 0-d tensor")
    if x.requires_grad:
        raise RuntimeError(
            f"mollify: {name} requires grad, but mollify is autograd-free (the noise is data "
            f"augmentation, not a learnable map); pass {name}.detach()"
        )


def _check_number(name: str, v: float) -> None:
    if not math.isfinite(v):
        raise ValueError(f"mollify: {name} must be finite, got {v}")


def split_param(name: str, v, x: torch.Tensor) -> Tuple[float, Optional[torch.Tensor]]:
    """A parameter as ``(number, None)`` or ``(0.0, tensor)``; checks type, rank, length, device."""
    if isinstance(v, bool) or not (isinstance(v, (int, float)) or torch.is_tensor(v)):
        raise TypeError(
            f"mollify: {name} must be a number, a 0-d tensor or a 1-D tensor of length x.shape[0], "
            f"got {type(v).__name__}"
        )
    if not torch.is_tensor(v):
        v = float(v)
        _check_number(name, v)
        return v, None
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"mollify: {name} must hold real numbers, got {v.dtype}")
    if v.dim() > 1:
        raise ValueError(
            f"mollify: {name} must be a number, a 0-d tensor or a 1-D tensor of length "
            f"x.shape[0]={x.shape[0]}, got a {v.dim()}-D tensor of shape {tuple(v.shape)}"
        )
    if v.dim() == 1 and v.shape[0] != x.shape[0]:
        raise ValueError(
            f"mollify: {name} has one value per sample, so its length must be x.shape[0]="
            f"{x.shape[0]}, got {v.shape[0]}"
        )
    if v.device.type != "cpu" and v.device != x.device:
        raise ValueError(
            f"mollify: {name} is on {v.device} but x is on {x.device}; move it with "
            f"{name}.to(x.device) (or keep it on the CPU)"
        )
    return 0.0, v.detach()


def check_static(x, sigma, alpha, blur_sigma, blur_radius, generator, out, return_noise, backend, names):
    """Type/shape/device checks; returns the split parameters. Raises before any write."""
    from .generator import Generator

    check_x(x)
    if not isinstance(backend, str) or backend not in names:
        raise ValueError(f"mollify: unknown backend {backend!r}; choose one of {', '.join(names)}")
    if not isinstance(return_noise, bool):
        raise TypeError(f"mollify: return_noise must be a bool, got {type(return_noise).__name__}")
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(
            "mollify: generator must be a mollify_fast.Generator (a Philox stream shared by every "
            f"backend) or None, got {type(generator).__name__}"
        )
    s = split_param("sigma", sigma, x)
    if s[1] is None:
        if s[0] < 0:
            raise ValueError(f"mollify: sigma must be >= 0, got {s[0]}")
        if alpha is None and s[0] > 1:
            raise ValueError(
                f"mollify: sigma must be <= 1 when alpha is None (alpha = sqrt(1 - sigma^2)), got "
                f"{s[0]}; pass alpha explicitly for DDPM/NCSN-style noising"
            )
    a = split_param("alpha", alpha, x) if alpha is not None else None
    b = None
    if blur_sigma is not None:
        if x.dim() < 2:
            raise ValueError(
                f"mollify: blur needs x with at least 2 dims (..., H, W), got shape {tuple(x.shape)}"
            )
        b = split_param("blur_sigma", blur_sigma, x)
        if b[1] is None and b[0] < 0:
            raise ValueError(f"mollify: blur_sigma must be >= 0, got {b[0]}")
        if b[1] is not None and b[1].dim() == 1 and x.dim() == 2:
            raise ValueError(
                "mollify: a 2-D x is a single plane, so blur_sigma must be one value, not one per row; "
                "add a batch dim (x[None]) for per-sample blur"
            )
    if blur_radius is not None:
        if isinstance(blur_radius, bool) or not isinstance(blur_radius, int):
            raise TypeError(f"mollify: blur_radius must be an int or None, got {type(blur_radius).__name__}")
        if blur_radius < 0:
            raise ValueError(f"mollify: blur_radius must be >= 0, got {blur_radius}")
        if blur_sigma is None:
            raise ValueError("mollify: blur_radius was given without blur_sigma; pass blur_sigma too")
    if out is not None:
        if not torch.is_tensor(out):
            raise TypeError(f"mollify: out must be a torch.Tensor, got {type(out).__name__}")
        if out.dtype != x.dtype:
            raise TypeError(f"mollify: out must have x's dtype {x.dtype}, got {out.dtype}")
        if out.shape != x.shape:
            raise ValueError(f"mollify: out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
        if out.device != x.device:
            raise ValueError(f"mollify: out must be on x's device {x.device}, got {out.device}")
        if out.requires_grad:
            raise RuntimeError("mollify: out requires grad; mollify is autograd-free, pass out.detach()")
    return s, a, b


def _extent(t: torch.Tensor) -> Tuple[int, int]:
    lo = hi = t.data_ptr()
    for size, stride in zip(t.shape, t.stride()):
        span = (size - 1) * stride * t.element_size()
        if span >= 0:
            hi += span
        else:
            lo += span
    return lo, hi + t.element_size()


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def check_out_memory(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor]) -> None:
    """Refuse ``out`` that partially overlaps ``x`` (or ``noise``) or overlaps itself."""
    if out.numel() == 0:
        return
    if torch._debug_has_internal_overlap(out) == 1:
        raise ValueError(
            "mollify: out has overlapping elements (e.g. from expand()); pass a dense tensor, "
            "e.g. out.contiguous()"
        )
    pairs = [("x", x)] + ([("noise", noise)] if noise is not None else [])
    for name, t in pairs:
        if t is None or t.untyped_storage().data_ptr() != out.untyped_storage().data_ptr():
            continue
        if name == "x" and same_view(t, out):
            continue  # exact in-place
        (alo, ahi), (blo, bhi) = _extent(t), _extent(out)
        if alo < bhi and blo < ahi:
            raise ValueError(
                f"mollify: out partially overlaps {name}; pass out=x for in-place, or a separate buffer"
            )


@dataclass
class Params:
    """Parameters in kernel form.

    ``sigma``/``alpha``: a Python float, or a contiguous ``[N]`` tensor in the compute dtype on
    x's device. ``blur``: None (no blur), a float, or such a tensor. ``radius``: an int, or an
    int32 ``[N]`` tensor on x's device; ``max_radius`` is its maximum (an int).
    """

    sigma: Param
    alpha: Param
    blur: Optional[Param]
    radius: Union[int, torch.Tensor]
    max_radius: int


def _tensor_values(name: str, t: torch.Tensor, n: int) -> torch.Tensor:
    """float64 CPU copy of a 0-d/1-D parameter, checked finite (one device sync at most)."""
    v = t.to("cpu", torch.float64)
    if not bool(torch.isfinite(v).all()):
        bad = v[~torch.isfinite(v)].reshape(-1)[0].item()
        raise ValueError(f"mollify: {name} must be finite, got {bad}")
    return v


def resolve_params(
    x: torch.Tensor,
    sigma: float,
    sigma_t: Optional[torch.Tensor],
    alpha: float,
    alpha_t: Optional[torch.Tensor],
    vp: bool,
    blur: float,
    blur_t: Optional[torch.Tensor],
    has_blur: bool,
    blur_radius: int,
) -> Params:
    """Value checks of tensor parameters, then conversion to :class:`Params`."""
    acc = compute_dtype(x.dtype)
    n = x.shape[0]

    def as_param(v64: torch.Tensor, src: torch.Tensor) -> Param:
        if v64.dim() == 0:
            return float(v64)
        return src.to(x.device, acc).contiguous()

    s_val = sigma
    if sigma_t is not None:
        v = _tensor_values("sigma", sigma_t, n)
        if bool((v < 0).any()):
            raise ValueError(f"mollify: sigma must be >= 0, got {v.min().item()}")
        if vp and bool((v > 1).any()):
            raise ValueError(
                f"mollify: sigma must be <= 1 when alpha is None (alpha = sqrt(1 - sigma^2)), got "
                f"{v.max().item()}; pass alpha explicitly for DDPM/NCSN-style noising"
            )
        s_val = as_param(v, sigma_t)
        if vp:
            a64 = torch.sqrt(1.0 - v * v)
            a_val = as_param(a64, a64)
    elif vp:
        a_val = math.sqrt(1.0 - sigma * sigma)
    if not vp:
        a_val = alpha
        if alpha_t is not None:
            a_val = as_param(_tensor_values("alpha", alpha_t, n), alpha_t)

    b_val: Optional[Param] = None
    radius: Union[int, torch.Tensor] = 0
    max_radius = 0
    if has_blur:
        if blur_t is not None:
            v = _tensor_values("blur_sigma", blur_t, n)
            if bool((v < 0).any()):
                raise ValueError(f"mollify: blur_sigma must be >= 0, got {v.min().item()}")
            b_val = as_param(v, blur_t)
        else:
            b_val = blur
        if blur_radius >= 0:
            radius = max_radius = blur_radius
        elif torch.is_tensor(b_val):
            # Radii from the float64 view of the values the kernels get (compute dtype), so that
            # every backend derives the same integer radius.
            r = torch.ceil(3.0 * b_val.to("cpu", torch.float64)).to(torch.int32)
            max_radius = int(r.max()) if r.numel() else 0
            radius = r.to(x.device)
        else:
            radius = max_radius = int(math.ceil(3.0 * b_val))
        if not torch.is_tensor(b_val) and b_val == 0.0:
            b_val = None  # identity
    return Params(s_val, a_val, b_val, radius, max_radius)

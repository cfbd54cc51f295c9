"""Annealing schedules for data mollification: ``gamma(u)``, the noise *variance*.

Each maps training progress ``u = step / mollify_steps`` in [0, 1] to ``sigma^2`` decreasing
from 1 (pure noise for the variance-preserving op) to ``clip_min`` (almost clean data).

Inputs: a Python or numpy number (returns a Python float), a numpy array (returns an array
of its floating dtype, float64 for integer arrays) or a tensor (returns a tensor of its shape,
dtype and device; float32, the default dtype, for integer tensors). Tensors and arrays are
computed in float64 and rounded once to their dtype, so a float32 result is the exact value
rounded to float32 (computed in float32, the sigmoid lost up to 1.4% of the variance near
``u = 1`` to cancellation). Take ``sqrt`` for the ``sigma`` that :func:`mollify_fast.mollify`
wants.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, Union, overload

import numpy as np
import torch

Value = Union[float, np.ndarray, torch.Tensor]
# The numbers a schedule takes and answers with a Python float.
_Number = Union[float, "np.integer", "np.floating"]

__all__ = ["sigmoid", "linear", "cosine", "SCHEDULES", "get"]


def _as_float64(u: Union[_Number, Value], name: str):
    """``(u64, finish)``: u as a Python float or a float64 tensor, and the map back to u's type."""
    if type(u) is float:  # a training loop's u = step / steps: no ABC checks on the hot path
        return u, float
    if torch.is_tensor(u):
        out_dtype: Union[torch.dtype, np.dtype] = u.dtype if u.is_floating_point() else torch.get_default_dtype()
        if u.is_complex() or u.dtype == torch.bool:
            raise TypeError(f"{name}: u must hold real numbers, got a {u.dtype} tensor")
        return u.to(torch.float64), lambda g: g.to(out_dtype)
    if isinstance(u, np.ndarray):
        if u.dtype.kind not in "fiu":
            raise TypeError(f"{name}: u must hold real numbers, got a numpy array of {u.dtype}")
        out_dtype = u.dtype if u.dtype.kind == "f" else np.dtype(np.float64)
        return torch.from_numpy(u.astype(np.float64)), lambda g: g.numpy().astype(out_dtype)
    if isinstance(u, bool) or not isinstance(u, numbers.Real):
        raise TypeError(
            f"{name}: u must be a number, a numpy array or a tensor, got {type(u).__name__}"
        )
    return float(u), float


def _clip(v, lo: float, hi: float):
    if torch.is_tensor(v):
        return v.clamp(lo, hi)
    return min(max(v, lo), hi)


@overload
def sigmoid(u: _Number, start: float = ..., end: float = ..., tau: float = ..., clip_min: float = ...) -> float: ...
@overload
def sigmoid(u: np.ndarray, start: float = ..., end: float = ..., tau: float = ..., clip_min: float = ...) -> np.ndarray: ...
@overload
def sigmoid(u: torch.Tensor, start: float = ..., end: float = ..., tau: float = ..., clip_min: float = ...) -> torch.Tensor: ...
def sigmoid(u: Union[_Number, Value], start: float = 0.0, end: float = 3.0, tau: float = 0.7, clip_min: float = 1e-9) -> Value:
    r"""The seed paper's sigmoid schedule (its reference code's ``sigmoid_schedule``).

    .. math::

        \gamma(u) = \frac{S(e/\tau) - S((u (e - s) + s)/\tau)}{S(e/\tau) - S(s/\tau)},
        \quad S(z) = \frac{1}{1 + e^{-z}},

    clipped to ``[clip_min, 1]``. With the defaults: 1.0, 0.4966, 0.1880, 0.0515 and 1e-9 at
    u = 0, 0.25, 0.5, 0.75, 1.

    Evaluated as the equal, cancellation-free
    ``gamma = S(-b) expm1(-(1-u)(e-s)/tau) / (S(-c) expm1(-(e-s)/tau))`` with
    ``b = (u(e-s)+s)/tau``, ``c = s/tau`` (from ``S(a) - S(b) = -S(a) S(-b) expm1(b - a)``):
    the textbook form subtracts two numbers near ``S(e/tau) = 0.986``, which costs 8 of
    float64's 53 bits at u = 0.999 and all but a few of float32's.
    """
    if tau <= 0 or end == start:
        raise ValueError(f"sigmoid: need tau > 0 and end != start, got tau={tau}, start={start}, end={end}")
    width = (end - start) / tau
    c = start / tau
    den = (1.0 / (1.0 + math.exp(c))) * math.expm1(-width)
    # A float u (a training loop's step / steps) stays on plain float arithmetic: inside a
    # training loop every extra Python call costs microseconds with the caches cold.
    u64, finish = (u, float) if type(u) is float else _as_float64(u, "sigmoid")
    if isinstance(u64, torch.Tensor):
        b_t = u64 * width + c
        return finish(_clip(torch.sigmoid(-b_t) * torch.expm1((u64 - 1.0) * width) / den, clip_min, 1.0))
    b = u64 * width + c
    s_neg_b = 1.0 / (1.0 + math.exp(b)) if b < 700 else 0.0  # exp overflows past ~709
    return finish(min(max(s_neg_b * math.expm1((u64 - 1.0) * width) / den, clip_min), 1.0))


@overload
def linear(u: _Number, clip_min: float = ...) -> float: ...
@overload
def linear(u: np.ndarray, clip_min: float = ...) -> np.ndarray: ...
@overload
def linear(u: torch.Tensor, clip_min: float = ...) -> torch.Tensor: ...
def linear(u: Union[_Number, Value], clip_min: float = 1e-9) -> Value:
    r""":math:`\gamma(u) = 1 - u`, clipped to ``[clip_min, 1]``."""
    if type(u) is float:  # the training loop's case, on plain floats (see sigmoid)
        return min(max(1.0 - u, clip_min), 1.0)
    u64, finish = _as_float64(u, "linear")
    return finish(_clip(1.0 - u64, clip_min, 1.0))


@overload
def cosine(u: _Number, clip_min: float = ...) -> float: ...
@overload
def cosine(u: np.ndarray, clip_min: float = ...) -> np.ndarray: ...
@overload
def cosine(u: torch.Tensor, clip_min: float = ...) -> torch.Tensor: ...
def cosine(u: Union[_Number, Value], clip_min: float = 1e-9) -> Value:
    r""":math:`\gamma(u) = \cos(\pi u / 2)^2`, clipped to ``[clip_min, 1]``."""
    if type(u) is float:  # the training loop's case, on plain floats (see sigmoid)
        cf = math.cos(u * math.pi / 2)
        return min(max(cf * cf, clip_min), 1.0)
    u64, finish = _as_float64(u, "cosine")
    c = torch.cos(u64 * (math.pi / 2)) if torch.is_tensor(u64) else math.cos(u64 * math.pi / 2)
    return finish(_clip(c * c, clip_min, 1.0))


SCHEDULES: Dict[str, Callable[..., Value]] = {"sigmoid": sigmoid, "linear": linear, "cosine": cosine}


def get(name: Union[str, Callable]) -> Callable[..., Value]:
    """A schedule by name (or a callable, returned as is)."""
    if callable(name):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)} or pass a callable")
    return SCHEDULES[name]

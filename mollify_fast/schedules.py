"""Annealing schedules for data mollification: ``gamma(u)``, the noise *variance*.

Each maps training progress ``u = step / mollify_steps`` in [0, 1] to ``sigma^2`` decreasing
from 1 (pure noise for the variance-preserving op) to ``clip_min`` (almost clean data). They
take a float (and return a float) or a tensor (and return a tensor of the same shape).
Take ``sqrt`` for the ``sigma`` that :func:`mollify_fast.mollify` wants.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Union

import torch

Value = Union[float, torch.Tensor]

__all__ = ["sigmoid", "linear", "cosine", "SCHEDULES", "get"]


def _clip(v: Value, lo: float, hi: float) -> Value:
    if torch.is_tensor(v):
        return v.clamp(lo, hi)
    return min(max(v, lo), hi)


def _is_tensor(u: Value) -> bool:
    if torch.is_tensor(u):
        return True
    if isinstance(u, bool) or not isinstance(u, (int, float)):
        raise TypeError(f"schedule: u must be a float or a tensor, got {type(u).__name__}")
    return False


def sigmoid(u: Value, start: float = 0.0, end: float = 3.0, tau: float = 0.7, clip_min: float = 1e-9) -> Value:
    r"""The seed paper's sigmoid schedule (its reference code's ``sigmoid_schedule``).

    .. math::

        \gamma(u) = \frac{S(e/\tau) - S((u (e - s) + s)/\tau)}{S(e/\tau) - S(s/\tau)},
        \quad S(z) = \frac{1}{1 + e^{-z}},

    clipped to ``[clip_min, 1]``. With the defaults: 1.0, 0.4966, 0.1880, 0.0515 and 1e-9 at
    u = 0, 0.25, 0.5, 0.75, 1.
    """
    if tau <= 0 or end == start:
        raise ValueError(f"sigmoid: need tau > 0 and end != start, got tau={tau}, start={start}, end={end}")
    S = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    v_start, v_end = S(start / tau), S(end / tau)
    z = (u * (end - start) + start) / tau
    mid = torch.sigmoid(z) if _is_tensor(u) else S(z)
    return _clip((v_end - mid) / (v_end - v_start), clip_min, 1.0)


def linear(u: Value, clip_min: float = 1e-9) -> Value:
    r""":math:`\gamma(u) = 1 - u`, clipped to ``[clip_min, 1]``."""
    _is_tensor(u)
    return _clip(1.0 - u, clip_min, 1.0)


def cosine(u: Value, clip_min: float = 1e-9) -> Value:
    r""":math:`\gamma(u) = \cos(\pi u / 2)^2`, clipped to ``[clip_min, 1]``."""
    c = torch.cos(u * (math.pi / 2)) if _is_tensor(u) else math.cos(u * math.pi / 2)
    return _clip(c * c, clip_min, 1.0)


SCHEDULES: Dict[str, Callable[..., Value]] = {"sigmoid": sigmoid, "linear": linear, "cosine": cosine}


def get(name: Union[str, Callable]) -> Callable[..., Value]:
    """A schedule by name (or a callable, returned as is)."""
    if callable(name):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)} or pass a callable")
    return SCHEDULES[name]

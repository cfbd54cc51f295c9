"""The exact, slow, pure-PyTorch definition of ``mollify`` (the test oracle).

Every compiled backend (``cpu``, ``triton``, ``cuda``) must reproduce these functions to
float32 rounding. They are written for clarity, not speed: Philox runs on int64 tensors
holding 32-bit words, and the blur is a direct mirrored convolution, one tap at a time.

The noise stream
----------------
A stream is a pair ``(seed, offset)`` of 64-bit unsigned integers. Counter group ``j``
(``j = 0, 1, ...``) is encrypted by Philox4x32-10 (Random123) with

* counter ``((offset + j) mod 2**32, (offset + j) >> 32 mod 2**32, 0, 0)``,
* key ``(seed mod 2**32, seed >> 32)``,

giving four 32-bit words ``w0..w3``. Each word becomes a uniform in [0, 1):
reinterpret it as int32 ``i``, take ``~i`` where ``i < 0``, convert to float32 and multiply by
``4.6566127342e-10``. Box-Muller (in float32) turns ``(u0, u1)`` and ``(u2, u3)`` into

    r = sqrt(-2 ln max(u0, 1e-7)),  th = 2 pi u1  ->  (r cos th, r sin th)

and likewise for ``(u2, u3)``: four standard normals for the logical elements ``4j .. 4j+3``.
The logical index of an element is its row-major index over ``x.shape``, whatever the memory
layout. This is bit-for-bit Triton's ``tl.randn4x(seed, offset + j)`` up to the last ulp of
the float32 transcendental functions. A call uses ``G = ceil(numel / 4)`` groups.

With ``dequantize=True`` a call uses ``2 G`` groups: groups ``offset .. offset + G - 1`` give
the normals as above, and group ``offset + G + j`` gives the dequantisation uniforms of the
logical elements ``4j .. 4j+3``: uniform ``k`` (the same word-to-uniform map) for element
``4j + k`` (:func:`dequant_uniforms`).

The op
------
``out = alpha * B(x) + sigma * eps`` with per-sample (dim 0) or scalar ``alpha`` and
``sigma``, computed in float32 (float64 for float64 input or float64 ``out_dtype``; the
normals themselves are always float32 values) and rounded once to ``out_dtype`` (default
x.dtype for floating x, float32 for uint8 x). The input map comes first, in the compute dtype
and in this order, one rounding per step: ``x_f = ((x + u) * input_scale) + input_shift``
with ``u = 0``, or the dequantisation uniform of the element when ``dequantize``; ``B`` and
the op then read ``x_f``. ``B`` is the separable Gaussian blur over the
last two dims of an ``[N, ..., H, W]`` tensor with mirrored ("reflect") borders, for any
radius: tap by tap for ``r < n`` along an axis of length ``n``, and with the weights folded
onto the mirrored axis for ``r >= n`` (exact; see :func:`mollify_fast._blur.fold`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union, cast

import torch

from ._blur import fold

__all__ = [
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_W0",
    "PHILOX_W1",
    "UNIFORM_SCALE",
    "philox4x32_10",
    "uniforms",
    "normals",
    "noise_like",
    "dequant_uniforms",
    "default_input_scale",
    "input_map",
    "reflect_index",
    "gaussian_weights",
    "blur_radius_for",
    "blur",
    "mollify",
]

# Philox4x32 constants (Salmon et al., SC'11; Random123 philox.h).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1
# Largest float32 such that (2**31 - 1) * scale < 1 after rounding: uniforms lie in [0, 1).
UNIFORM_SCALE = 4.6566127342e-10
_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1

Number = Union[int, float]


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of a constant ``a`` and words ``b``.

    The product of two 32-bit words needs 64 unsigned bits, which int64 cannot hold, so the
    operands are split into 16-bit halves and recombined without overflow.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    mid = a_hi * b_lo + a_lo * b_hi  # < 2**33
    low = a_lo * b_lo + ((mid & 0xFFFF) << 16)  # < 2**33
    hi = a_hi * b_hi + (mid >> 16) + (low >> 32)
    return hi & _MASK32, low & _MASK32


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32 with 10 rounds (Random123).

    Args:
        counter: int64 tensor ``[..., 4]`` of words in ``[0, 2**32)``.
        key: int64 tensor ``[..., 2]`` of words in ``[0, 2**32)``, broadcastable to counter.

    Returns:
        int64 tensor ``[..., 4]`` of output words in ``[0, 2**32)``.
    """
    if counter.dtype != torch.int64 or key.dtype != torch.int64:
        raise TypeError("philox4x32_10: counter and key must be int64 tensors")
    if counter.shape[-1] != 4 or key.shape[-1] != 2:
        raise ValueError("philox4x32_10: counter must be [..., 4] and key [..., 2]")
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key.unbind(-1)
    for _ in range(10):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return torch.stack(torch.broadcast_tensors(c0, c1, c2, c3), dim=-1)


def _words_to_uniform(w: torch.Tensor) -> torch.Tensor:
    i = torch.where(w >= 2**31, w - 2**32, w)  # reinterpret as int32
    i = torch.where(i < 0, -i - 1, i)  # ~i
    return i.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def uniforms(seed: int, offset: int, groups: int) -> torch.Tensor:
    """The uniforms ``u0..u3`` of counter groups ``0..groups-1``: float32 ``[groups, 4]``."""
    seed &= _MASK64
    offset &= _MASK64
    j = torch.arange(groups, dtype=torch.int64)
    # offset + j modulo 2**64, kept as two 32-bit words (int64 would overflow above 2**63).
    lo = (offset & _MASK32) + j
    hi = ((offset >> 32) + (lo >> 32)) & _MASK32
    lo = lo & _MASK32
    zeros = torch.zeros_like(lo)
    counter = torch.stack([lo, hi, zeros, zeros], dim=-1)
    key = torch.tensor([seed & _MASK32, seed >> 32], dtype=torch.int64)
    return _words_to_uniform(philox4x32_10(counter, key))


def normals(seed: int, offset: int, numel: int) -> torch.Tensor:
    """The first ``numel`` standard normals of stream ``(seed, offset)``: float32 ``[numel]``."""
    groups = -(-numel // 4)
    u = uniforms(seed, offset, groups)
    two_pi = torch.tensor(2 * math.pi, dtype=torch.float32)
    r01 = torch.sqrt(-2.0 * torch.log(torch.clamp(u[:, 0], min=1e-7)))
    r23 = torch.sqrt(-2.0 * torch.log(torch.clamp(u[:, 2], min=1e-7)))
    th01 = two_pi * u[:, 1]
    th23 = two_pi * u[:, 3]
    z = torch.stack(
        [r01 * torch.cos(th01), r01 * torch.sin(th01), r23 * torch.cos(th23), r23 * torch.sin(th23)],
        dim=-1,
    )
    return z.reshape(-1)[:numel]


def noise_like(x: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """Normals for every element of ``x`` by logical (row-major) index: float32, x's shape, CPU."""
    return normals(seed, offset, x.numel()).reshape(x.shape)


def dequant_uniforms(seed: int, offset: int, numel: int) -> torch.Tensor:
    """The dequantisation uniforms of a call on stream ``(seed, offset)`` with ``numel``
    elements: float32 ``[numel]`` in [0, 1), element ``4j + k`` taking uniform ``k`` of counter
    group ``offset + G + j`` (``G = ceil(numel / 4)``, the groups of the normals come first)."""
    groups = -(-numel // 4)
    return uniforms(seed, (offset & _MASK64) + groups, groups).reshape(-1)[:numel]


def default_input_scale(dtype: torch.dtype, dequantize: bool) -> float:
    """``input_scale`` when none is given: 1 for floating x, 1/255 for uint8 (to [0, 1]) and
    1/256 for uint8 with ``dequantize`` (``(x + u) / 256`` lies in [0, 1))."""
    if dtype == torch.uint8:
        return 1.0 / 256.0 if dequantize else 1.0 / 255.0
    return 1.0


def input_map(x: torch.Tensor, acc: torch.dtype, input_scale: float, input_shift: float,
              u: Optional[torch.Tensor]) -> torch.Tensor:
    """``((x + u) * input_scale) + input_shift`` in ``acc`` on x's device, one rounding per step;
    ``u`` (float32, x's shape and device) is None for no dequantisation, and the scale and shift
    are taken at ``acc``'s precision. With scale 1, shift 0 and no ``u`` this is ``x.to(acc)``."""
    xf = x.detach().to(acc)
    if u is not None:
        xf = xf + u.to(acc)
    if float(input_scale) != 1.0:
        xf = xf * torch.tensor(float(input_scale), dtype=acc)
    if float(input_shift) != 0.0:
        xf = xf + torch.tensor(float(input_shift), dtype=acc)
    return xf


def reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror index ``i`` into ``[0, n)`` without repeating the edge (-1 -> 1, n -> n-2).

    Repeats for any distance (period ``2(n-1)``); ``n == 1`` maps everything to 0.
    """
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def blur_radius_for(blur_sigma: float) -> int:
    """Default radius ``ceil(3 * blur_sigma)`` (computed in float64)."""
    return int(math.ceil(3.0 * float(blur_sigma)))


def gaussian_weights(blur_sigma: float, radius: int, dtype=torch.float32) -> torch.Tensor:
    """Normalised taps ``w_k = exp(-k^2 / (2 s^2))``, ``k = -r..r``: ``[2r+1]``.

    Computed in float64 as ``exp(-(k/s)^2 / 2)`` (``2 s^2`` would underflow for tiny ``s``),
    normalised, then rounded to ``dtype``. ``blur_sigma == 0`` gives the identity (a single 1
    at k = 0).
    """
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    if blur_sigma == 0:
        return (k == 0).to(dtype)
    w = torch.exp(-0.5 * (k / float(blur_sigma)) ** 2)
    return (w / w.sum()).to(dtype)


def _axis_taps(blur_sigma: float, radius: int, n: int, dtype) -> tuple:
    """``(offsets, weights)`` of the blur along an axis of length ``n``.

    ``r < n``: the definition itself, taps ``k = -r..r``. ``r >= n``: the ``2r+1`` float64
    weights folded onto the mirrored axis (:func:`mollify_fast._blur.fold`: taps k and
    k + 2(n-1) read the same pixel, so their weights are summed), radius ``n - 1``. That is
    exact math, not an approximation; it keeps the cost O(n) per pixel for any r.
    """
    if blur_sigma == 0:
        radius = 0  # the identity reads no neighbour (a NaN next to it stays next to it)
    w = gaussian_weights(blur_sigma, radius, torch.float64)
    if radius >= n:
        w = fold(w, n)
    m = (w.shape[0] - 1) // 2
    return range(-m, m + 1), w.to(dtype)


def _blur_plane_stack(p: torch.Tensor, blur_sigma: float, radius: int) -> torch.Tensor:
    """Blur ``[P, H, W]`` float planes: width pass, then height pass, tap by tap."""
    H, W = p.shape[-2:]
    cols = torch.arange(W)
    rows = torch.arange(H)
    tmp = torch.zeros_like(p)
    ks, w = _axis_taps(blur_sigma, radius, W, p.dtype)
    for t, k in enumerate(ks):
        tmp += w[t] * p[:, :, reflect_index(cols + k, W)]
    res = torch.zeros_like(p)
    ks, w = _axis_taps(blur_sigma, radius, H, p.dtype)
    for t, k in enumerate(ks):
        res += w[t] * tmp[:, reflect_index(rows + k, H), :]
    return res


def blur(
    x: torch.Tensor,
    blur_sigma: Union[Number, torch.Tensor],
    blur_radius: Optional[Union[int, Sequence[int], torch.Tensor]] = None,
) -> torch.Tensor:
    """Gaussian blur over the last two dims, each plane separately, mirrored borders.

    Args:
        x: ``[N, ..., H, W]`` floating tensor, at least 3 dims (dim 0 is the batch).
        blur_sigma: a number, or one value per sample: ``[N]`` or ``[N, 1, ..., 1]``.
        blur_radius: taps on each side; default ``ceil(3 * blur_sigma)`` per sample.

    Returns:
        float32 tensor (float64 for float64 input) of x's shape, on the CPU.
    """
    if x.dim() < 3:
        raise ValueError("blur: x needs at least 3 dims [N, ..., H, W] (dim 0 is the batch); pass x[None]")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.detach().to("cpu", acc)
    if not (torch.is_tensor(blur_sigma) and blur_sigma.dim() >= 1):
        s = float(blur_sigma)
        r = blur_radius_for(s) if blur_radius is None else int(cast(int, blur_radius))
        planes = xf.reshape(-1, *x.shape[-2:])
        return _blur_plane_stack(planes, s, r).reshape(x.shape)
    # The kernels hold blur sigma in the compute dtype, and derive radii from that value.
    sig = blur_sigma.detach().to("cpu", acc).reshape(-1).tolist()
    if blur_radius is None:
        radii = [blur_radius_for(s) for s in sig]
    elif torch.is_tensor(blur_radius) or isinstance(blur_radius, (list, tuple)):
        radii = [int(r) for r in blur_radius]
    else:
        radii = [int(cast(int, blur_radius))] * len(sig)
    out = torch.empty_like(xf)
    for n in range(x.shape[0]):
        planes = xf[n].reshape(-1, *x.shape[-2:])
        out[n] = _blur_plane_stack(planes, sig[n], radii[n]).reshape(x.shape[1:])
    return out


def _per_sample(v: Union[Number, torch.Tensor], x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """A scalar or per-sample (``[N]`` or ``[N, 1, ..., 1]``) parameter as a tensor
    broadcastable against ``x`` (CPU, acc)."""
    t = v.detach().to("cpu", acc) if torch.is_tensor(v) else torch.tensor(float(v), dtype=acc)
    if t.dim() >= 1:
        return t.reshape(-1, *([1] * (x.dim() - 1)))
    return t


def mollify(
    x: torch.Tensor,
    sigma: Union[Number, torch.Tensor],
    *,
    alpha: Optional[Union[Number, torch.Tensor]] = None,
    blur_sigma: Optional[Union[Number, torch.Tensor]] = None,
    blur_radius: Optional[Union[int, Sequence[int], torch.Tensor]] = None,
    seed: int = 0,
    offset: int = 0,
    return_noise: bool = False,
    input_scale: Optional[Number] = None,
    input_shift: Number = 0.0,
    dequantize: bool = False,
    out_dtype: Optional[torch.dtype] = None,
    noise: Optional[torch.Tensor] = None,
):
    """Exact ``alpha * B(x_f) + sigma * eps`` for stream ``(seed, offset)``.

    Shapes: ``x`` is ``[N, ...]`` (uint8 or floating); ``sigma``, ``alpha`` and ``blur_sigma``
    are numbers, 0-d tensors or ``[N]`` tensors. ``alpha=None`` means ``sqrt(1 - sigma^2)``
    (computed in float64). ``x_f`` is :func:`input_map` of x (``input_scale`` defaulting to
    :func:`default_input_scale`), with the :func:`dequant_uniforms` when ``dequantize``.
    ``noise``: a given eps of x's shape (any float dtype) used instead of the stream's normals,
    converted to the compute dtype.
    No argument checking beyond what the math needs: the public ``mollify_fast.mollify`` does it.

    Returns:
        ``out`` (``out_dtype``, on the CPU, contiguous), and ``eps`` (``out_dtype``) when
        ``return_noise``. ``out_dtype`` defaults to x.dtype for floating x, float32 for uint8.
    """
    if out_dtype is None:
        out_dtype = torch.float32 if x.dtype == torch.uint8 else x.dtype
    acc = torch.float64 if torch.float64 in (x.dtype, out_dtype) else torch.float32
    if input_scale is None:
        input_scale = default_input_scale(x.dtype, dequantize)
    if alpha is None:
        s64 = sigma.detach().to("cpu", torch.float64) if torch.is_tensor(sigma) else torch.tensor(float(sigma), dtype=torch.float64)
        alpha = torch.sqrt(1.0 - s64 * s64)
    a = _per_sample(alpha, x, acc)
    s = _per_sample(sigma, x, acc)
    eps = noise_like(x, seed, offset) if noise is None else noise.detach().to("cpu", acc)
    u = dequant_uniforms(seed, offset, x.numel()).reshape(x.shape) if dequantize else None
    xf = input_map(x.detach().cpu(), acc, input_scale, input_shift, u)
    if blur_sigma is not None and not _is_zero(blur_sigma):
        xb = blur(xf, blur_sigma, blur_radius)
    else:
        xb = xf
    out = (a * xb + s * eps.to(acc)).to(out_dtype)
    if return_noise:
        return out, eps.to(out_dtype)
    return out


def _is_zero(v) -> bool:
    if torch.is_tensor(v):
        return bool((v == 0).all())
    return float(v) == 0.0

"""Gaussian blur helpers shared by the pure-PyTorch paths: weight folding for any radius.

The blur (README, "The contract, in short": the blur) reads ``x[reflect(i + k)]`` for
``k = -r..r``, where ``reflect`` mirrors without repeating the edge pixel. Along an axis of length ``n`` it has period
``P = 2(n-1)``: taps ``k`` and ``k + P`` read the same pixel for every ``i``. So the ``2r+1``
weights can be *folded*: summed per residue class ``k mod P``. The folded filter has radius
``min(r, n-1)`` and gives exactly the same sum (up to the order of float additions):

* the classes ``1..n-2`` and ``P-(n-2)..P-1`` become the taps ``k' = 1..n-2`` and
  ``-(n-2)..-1`` (symmetric, since the Gaussian is);
* the class ``n-1`` (= ``-(n-1)`` mod P) reads the same pixel from ``+(n-1)`` and ``-(n-1)``,
  so its weight is split in half between the two end taps, keeping the filter symmetric;
* ``n == 1`` is the identity (every tap reads the only pixel; the weights sum to 1).

Weights are ``exp(-(k/s)^2 / 2)`` in float64 (``k/s`` first: ``2 s^2`` underflows for
``s = 1e-30`` in float32, and the old ``0/0`` centre tap gave NaN), normalised over each
sample's own ``2r+1`` taps *before* folding, then rounded to the compute dtype. ``s == 0`` is
the identity with radius 0.

Cost: the weights take ``O(min(r, 39 s))`` per distinct ``(s, r)``: beyond ``|k| = 38.6 s``
``exp(-(k/s)^2/2) < 2**-1074`` is exactly 0 in float64, so those taps add nothing (they still
count for the folded filter's reach, which only depends on ``r``). The blur then costs
``O(min(r, n-1))`` per pixel and axis, whatever ``r``.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

# Largest blur radius any call accepts. One call computes up to 2r+1 float64 weights per
# distinct blur sigma and axis length (at the limit 2**21 taps, 16 MiB per sigma), and a
# radius of 2**20 (blur_sigma ~ 350,000 px) already blurs any image side below 2**20 pixels to
# within (n / sigma)^2 < 1% of its mean, so larger radii buy nothing but time. It also keeps
# every radius, and 2r+1, far inside int32 for the kernels.
MAX_BLUR_RADIUS = 1 << 20

# exp(-t) is exactly 0 in float64 for t > 745.14 (2**-1074 is the smallest subnormal), i.e.
# for |k| / s > sqrt(2 * 745.14) = 38.6: taps beyond 39 s are exact zeros.
_ZERO_BEYOND_SIGMAS = 39.0

# Elements of float64 weights built at once ([rows, 2K+1]); larger requests go row by row.
_WEIGHT_BLOCK = 1 << 22


def fold(w: torch.Tensor, n: int) -> torch.Tensor:
    """Fold symmetric taps ``w`` (``[..., 2r+1]``, k = -r..r) onto an axis of length ``n``.

    Returns ``[..., 2m+1]`` with ``m = min(r, n-1)`` such that, for every ``i`` in ``[0, n)``,
    ``sum_k w[k] v[reflect(i+k)] == sum_k' out[k'] v[reflect(i+k')]`` (exact math). Weights
    stay in w's dtype; ``w`` is returned unchanged when ``r <= n-1``.
    """
    r = (w.shape[-1] - 1) // 2
    if n == 1:
        return w.sum(-1, keepdim=True)
    if r <= n - 1:
        return w
    period = 2 * (n - 1)
    k = torch.arange(-r, r + 1, device=w.device)
    cls = torch.zeros(*w.shape[:-1], period, dtype=w.dtype, device=w.device)
    cls.index_add_(-1, torch.remainder(k, period), w)
    kk = torch.arange(-(n - 1), n, device=w.device)
    out = cls[..., torch.remainder(kk, period)]
    out[..., 0] *= 0.5  # class n-1 is read from both ends: half each
    out[..., -1] *= 0.5
    return out


def _rows(s: List[float], r: List[int], n: int) -> torch.Tensor:
    """Folded float64 taps of radius ``min(max r, n-1)``, one row per (s, r) pair: ``[G, 2m+1]``.

    Row g is ``exp(-(k/s_g)^2 / 2)`` for ``|k| <= r_g`` (zero beyond), normalised over its own
    taps, then folded; ``s_g == 0`` (or ``r_g == 0``) is the identity.
    """
    m = min(max(r), n - 1)
    # Taps beyond 39 s are exact zeros: build them only as far as the fold can tell them apart
    # (the folded reach min(r, n-1) depends on r alone, and 2n more taps reach every residue).
    full = min(max(r), math.ceil(_ZERO_BEYOND_SIGMAS * max(s)) + 2 * n)
    k = torch.arange(-full, full + 1, dtype=torch.float64)
    out = torch.empty(len(s), 2 * m + 1, dtype=torch.float64)
    step = max(1, _WEIGHT_BLOCK // k.numel())
    for g0 in range(0, len(s), step):
        st = torch.tensor(s[g0:g0 + step], dtype=torch.float64)[:, None]
        rt = torch.tensor(r[g0:g0 + step], dtype=torch.int64)[:, None]
        ident = (st == 0) | (rt == 0)
        w = torch.exp(-0.5 * (k / torch.where(ident, 1.0, st)) ** 2)
        w = torch.where(ident, (k == 0).to(w.dtype), w * (k.abs() <= rt))
        w = fold(w / w.sum(-1, keepdim=True), n)
        out[g0:g0 + step] = w
    return out


@functools.lru_cache(maxsize=64)
def sample_weights(s: Tuple[float, ...], r: Tuple[int, ...], n: int) -> torch.Tensor:
    """Like :func:`_rows`, computing each distinct ``(s, r)`` pair once (float64, CPU).

    Cached: a training loop repeats its blur sigmas, and building the taps costs a dozen small
    tensor ops per call. Callers must not modify the result.
    """
    pairs: Dict[Tuple[float, int], int] = {}
    inv = [pairs.setdefault((sv, rv), len(pairs)) for sv, rv in zip(s, r)]
    keys = list(pairs)
    uniq = _rows([k[0] for k in keys], [k[1] for k in keys], n)
    return uniq[torch.tensor(inv, dtype=torch.int64)] if len(keys) < len(s) else uniq


def _reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _conv2d(src: torch.Tensor, w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` in true float32 on CUDA. cuDNN may use TF32 for float32 convolutions by
    default (``torch.backends.cudnn.allow_tf32``): a 10-bit mantissa, which put this blur 6e-5
    off the reference at blur sigma 40 on an H100 (the contract allows 2e-5 * (1 + |v|))."""
    if not src.is_cuda or src.dtype != torch.float32:
        return F.conv2d(src, w, groups=groups)
    c = torch.backends.cudnn
    with c.flags(enabled=c.enabled, benchmark=c.benchmark, deterministic=c.deterministic, allow_tf32=False):
        return F.conv2d(src, w, groups=groups)


def _pass(planes: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """One separable pass over ``planes`` ``[C, H, W]`` along ``dim`` (-1: width, -2: height)
    with taps ``w`` ``[1 or C, 2m+1]``, m <= n-1 (a single reflection reaches every tap)."""
    m = (w.shape[-1] - 1) // 2
    if m == 0:
        return planes * w[:, 0].view(-1, 1, 1) if w.shape[0] > 1 else planes * w[0, 0]
    n = planes.shape[dim]
    idx = _reflect_index(torch.arange(-m, n + m, device=planes.device), n)
    src = planes.index_select(dim % 3, idx)
    C = planes.shape[0]
    shape = (-1, 1, 1, 2 * m + 1) if dim == -1 else (-1, 1, 2 * m + 1, 1)
    if w.shape[0] == 1:  # one filter for every plane: planes are the batch of a 1-channel conv
        return _conv2d(src[:, None], w.reshape(shape))[:, 0]
    return _conv2d(src[None], w.reshape(shape), groups=C)[0]


def blur(x: torch.Tensor, p, acc: torch.dtype) -> torch.Tensor:
    """Separable Gaussian blur of the last two dims of ``x`` ``[N, ..., H, W]`` (width pass,
    then height pass) for any radius, in dtype ``acc``: a new contiguous tensor of x's shape.

    ``p`` is a :class:`mollify_fast._validate.Params` with a blur. Samples are blurred in groups
    that share one reach ``(min(r, W-1), min(r, H-1))``, so a NaN or inf spreads exactly as far
    as each sample's own radius (as in the reference), never by a zero tap of a wider sample.
    """
    N = x.shape[0]
    H, W = x.shape[-2:]
    planes = x.reshape(N, -1, H, W).to(acc)
    C = planes.shape[1]
    per_sample = torch.is_tensor(p.blur_sigma)
    if per_sample:
        s = p.blur_sigma_host.tolist()
        r = [0 if sv == 0 else int(rv) for sv, rv in zip(s, p.radius_host.tolist())]
    else:
        s, r = [float(p.blur_sigma)], [int(p.radius)]
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, rv in enumerate(r):
        groups.setdefault((min(rv, W - 1), min(rv, H - 1)), []).append(i)
    res = planes if len(groups) == 1 else torch.empty_like(planes)
    for (mx, my), idx in groups.items():
        whole = len(idx) == len(r)
        sg, rg = tuple(s[i] for i in idx), tuple(r[i] for i in idx)
        wx = sample_weights(sg, rg, W).to(x.device, acc)
        wy = sample_weights(sg, rg, H).to(x.device, acc)
        sub = planes if whole else planes[torch.tensor(idx, device=x.device)]
        if per_sample:  # one filter per plane
            wx = wx.repeat_interleave(C, dim=0)
            wy = wy.repeat_interleave(C, dim=0)
        out = _pass(_pass(sub.reshape(-1, H, W), wx, -1), wy, -2).reshape(sub.shape)
        if whole:
            res = out
        else:
            res[torch.tensor(idx, device=x.device)] = out
    return res.reshape(x.shape)

"""The ``triton`` backend: fused Triton kernels for noise and blur + noise.

Runs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (how CI checks it without a
GPU; the variable must be set before this module is imported). float64 is not supported here
(``auto`` sends it to ``cuda`` or ``torch``). This module (and so Triton) is imported only when
the backend is first asked for; without Triton it reports itself unavailable with the error.
Works with Triton 3.6 to 3.8: only ``tl`` names 3.6 has, and the Philox pieces of
``tl.randn4x`` (``philox_impl``, ``uint_to_uniform_float``, ``pair_uniform_to_normal``) called
directly, so the normals are exactly ``tl.randn4x(seed, offset + j)`` (README, "The contract, in
short": the noise stream).

Host side: :func:`_plan` turns a call into a list of :class:`Launch` (kernel, grid, arguments,
constexprs, options) without touching a GPU; :func:`mollify_triton` runs them on ``x``'s
device and its current stream. Layout planning is cached per shape/strides/flags.

Specialisation: the stream ``(seed, offset)`` travels as four int32 halves marked
``do_not_specialize``, so Triton sees the same types and no value-1 / divisible-by-16
properties whatever the stream: one compiled variant per layout for a whole training run.

Noise kernel: each program owns ``NOISE_BLOCK`` consecutive counter groups; one Philox per
group gives the normals of the 4 consecutive logical elements it covers, which one thread
loads and stores as a 4-vector (16 B for float32) on contiguous tensors; on strided ones
(channels_last, views) as four lane vectors through each tensor's own strides.

Blur + noise kernel (radius ``R <= FUSED_MAX_RADIUS``): a program is a ``[S, BW]`` grid of
threads (``BW`` picked per width so few lanes fall past it, see :func:`_blur_tiles`); thread ``(s, q)`` owns output columns ``4q .. 4q+3`` of the ``TILE_H`` rows of unit
``s`` (a unit is a plane and a strip of rows). It walks the ``TILE_H + 2R`` mirrored source rows
once, blurs each along the width from ``4 + 2R`` loads (mirrored column offsets computed once per
program), keeps the last ``2R + 1`` width-blurred rows in registers (``R`` is a constexpr, the
loops unroll, so that ring costs no moves) and emits an output row as soon as its ``2R + 1``
source rows are in: the height pass, one Philox for the thread's 4 elements, one store. When
``W % 4 != 0`` a row's 4-column windows straddle two counter groups; the second is the right-hand
neighbour's first, handed over with ``tl.gather``, and each column block's last thread only
lends its group (one Philox per thread still, at 1/BW of the lanes idle).
Larger radii take two launches of :func:`_mollify_blur_axis_kernel` through a float32 scratch
(width pass, then height pass + noise). Both handle ``R < min(H, W)`` only (one reflection);
larger radii are routed elsewhere before this backend is called, and :func:`_plan` refuses them.
"""
from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union, cast

import torch
import triton
import triton.language as tl
from triton.language.random import philox_impl, uint_to_uniform_float

from .._validate import Params
from ..generator import DeviceStream, to_unsigned64
from ._native import coalesce

MAX_DIMS = 4  # noise kernel: coalesced dims it indexes; more runs on contiguous copies
MAX_PLANE_DIMS = 3  # blur kernels: coalesced dims in front of H, W
NOISE_BLOCK = 512  # groups per program: 2048 elements, 4 groups per thread at 4 warps
NUM_WARPS = 4
THREADS = 32 * NUM_WARPS
BLUR_TILE_H = 16  # output rows per unit: (16 + 2R) / 16 source rows blurred per output row
FUSED_MAX_RADIUS = 8  # beyond, the unrolled ring of 2R+1 rows costs too many registers
# Register caps of the fused blur, (R, element bytes) -> maxnreg, each checked spill-free at
# sm_90 (see _fused_options). Not capped: float32 R = 2 (72 spilled 48 B), bfloat16 R = 3 (80
# spilled 12 B; uncapped 87), R >= 4 (R = 6 float32 uncapped 144: a cap of 128 spilled 72 B).
FUSED_MAXNREG = {(1, 4): 64, (1, 2): 64, (2, 2): 72, (3, 4): 80}
INT32_MAX = 2**31 - 1
# Under TRITON_INTERPRET=1 (read once, at import, like Triton itself), round float32 ->
# bfloat16 from the bits (see _cast); compiled kernels keep Triton's own conversion.
_EXACT_BF16 = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


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


# ------------------------------------------------------------------------------------------
# Device helpers
# ------------------------------------------------------------------------------------------


@triton.jit
def _cast(v, ptr):
    """float32 ``v`` as ``ptr``'s element type, rounded as ``torch.Tensor.to`` rounds (to nearest,
    ties to even, overflow to inf, subnormals kept). Compiled, that is ``.to`` itself (a
    ``cvt.rn`` on sm_90). The interpreter's float32 -> bfloat16 conversion truncates (65504 ->
    65280) and loses subnormals, so there bfloat16 is rounded here from the bits: add half an
    ulp minus one plus the kept lowest bit, keep the high half; NaN stays a quiet NaN."""
    if _EXACT_BF16 and ptr.dtype.element_ty == tl.bfloat16:
        b = v.to(tl.uint32, bitcast=True)
        r = (b + (0x7FFF + ((b >> 16) & 1))) >> 16
        r = tl.where(v != v, (b >> 16) | 0x40, r)
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(ptr.dtype.element_ty)


@triton.jit
def _f32(v):
    """A loaded value as float32 (exact). The interpreter's bfloat16 -> float32 conversion flushes
    bfloat16 subnormals to 0; there the bits are widened instead (a bfloat16 is the high half
    of a float32). Compiled: ``.to(tl.float32)``."""
    if _EXACT_BF16 and v.dtype == tl.bfloat16:
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(tl.float32)


@triton.jit
def _stream_key(seed_lo, seed_hi, off_lo, off_hi, words_ptr, WORDS: tl.constexpr):
    """The Philox key words and the 64-bit start counter from the four int32 halves, or, with
    ``WORDS``, from the int64 words ``[key, offset]`` at ``words_ptr`` (a device-resident stream:
    README, "CUDA graphs")."""
    if WORDS:
        key = tl.load(words_ptr)
        off = tl.load(words_ptr + 1)
        k0 = (key & 0xFFFFFFFF).to(tl.uint32)
        k1 = ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
    else:
        k0 = seed_lo.to(tl.uint32, bitcast=True)
        k1 = seed_hi.to(tl.uint32, bitcast=True)
        off = (off_hi.to(tl.int64) << 32) | off_lo.to(tl.uint32, bitcast=True).to(tl.int64)
    return k0, k1, off


@triton.jit
def _uniforms4(counter, k0, k1):
    """``tl.rand4x`` for 64-bit counters ``counter`` (any shape): 4 float32 uniforms each, by
    ``uint_to_uniform_float`` (the word as int32, ``~i`` where negative, times 4.6566127342e-10:
    the README's word-to-uniform map)."""
    c0 = counter.to(tl.uint32)  # truncation keeps the low word
    c1 = (counter >> 32).to(tl.uint32)
    zero = c0 * 0
    w0, w1, w2, w3 = philox_impl(c0, c1, zero, zero, k0, k1)
    return uint_to_uniform_float(w0), uint_to_uniform_float(w1), uint_to_uniform_float(w2), uint_to_uniform_float(w3)


@triton.jit
def _normals4(counter, k0, k1):
    """``tl.randn4x`` for 64-bit counters ``counter`` (any shape): 4 float32 normals each."""
    u0, u1, u2, u3 = _uniforms4(counter, k0, k1)
    z0, z1 = _box_muller(u0, u1)
    z2, z3 = _box_muller(u2, u3)
    return z0, z1, z2, z3


@triton.jit
def _map_in(x, u, in_scale, in_shift, MAP: tl.constexpr, DEQUANT: tl.constexpr):
    """The input map (README, "The input map"): ``((x + u) * in_scale) + in_shift`` in float32,
    one rounding per step (MAP launches compile without fp fusion), or x itself."""
    if MAP:
        if DEQUANT:
            x = x + u
        return x * in_scale + in_shift
    else:
        return x


@triton.jit
def _box_muller(u1, u2):
    """``(r cos th, r sin th)``, ``r = sqrt(-2 ln max(u1, 1e-7))``, ``th = 2 pi u2``: what
    ``tl.randn4x`` computes, with the sine and cosine from polynomials on a quarter turn.

    Why: ``tl.cos``/``tl.sin`` compile to libdevice's full-range versions (range reduction
    with a Payne-Hanek slow path); ``th`` is known to lie in [0, 2 pi). Here ``u2`` is split
    into quarter turns ``q = round(4 u2)`` and ``f = u2 - q / 4`` (exact), ``a = 2 pi f`` in
    [-pi/4, pi/4], Cephes' sinf/cosf polynomials (relative error ~1e-7), and a rotation by
    ``q`` quarter turns. |difference| from ``tl.randn4x`` <= ~1e-6 (r <= 5.7): inside the
    contract's 2e-5 (1 + |v|). The log stays ``tl.log``: a fast log2 loses the small radii.
    """
    r = tl.sqrt(-2.0 * tl.log(tl.maximum(1.0e-7, u1)))
    q = tl.floor(4.0 * u2 + 0.5)
    a = (u2 - 0.25 * q) * 6.283185307179586
    a2 = a * a
    sa = a + a * a2 * (-1.6666654611e-1 + a2 * (8.3321608736e-3 + a2 * -1.9515295891e-4))
    ca = 1.0 - 0.5 * a2 + a2 * a2 * (4.166664568298827e-2 + a2 * (-1.388731625493765e-3 + a2 * 2.443315711809948e-5))
    qi = q.to(tl.int32) & 3
    odd = (qi & 1) != 0
    c = tl.where(odd, sa, ca)
    s = tl.where(odd, ca, sa)
    c = tl.where((qi == 1) | (qi == 2), -c, c)
    s = tl.where(qi >= 2, -s, s)
    return r * c, r * s


@triton.jit
def _quad(a, b, c, d):
    """``[..., 4]`` from four same-shape tensors (lane k = k-th argument), held by one thread."""
    # join(p, q)[..., i, j] is (p, q)[j][..., i]: lane 2i + j of the reshape.
    return tl.reshape(tl.join(tl.join(a, c), tl.join(b, d)), a.shape + (4,))


@triton.jit
def _param(ptr, scalar, n, PER_SAMPLE: tl.constexpr):
    # A per-sample parameter gathered for sample indices n (always valid), or the scalar.
    if PER_SAMPLE:
        return tl.load(ptr + n)
    else:
        return scalar


@triton.jit
def _params_at(i, numel, sample_numel, sigma_ptr, alpha_ptr, sigma, alpha, SIGMA_PER_SAMPLE: tl.constexpr,
               ALPHA_PER_SAMPLE: tl.constexpr):
    # (sigma, alpha) of logical indices i: gathered per sample (n = i // sample_numel, clamped
    # for masked lanes past the end), or the scalars.
    if SIGMA_PER_SAMPLE or ALPHA_PER_SAMPLE:
        n = tl.minimum(i // sample_numel, (numel - 1) // sample_numel)
        return _param(sigma_ptr, sigma, n, SIGMA_PER_SAMPLE), _param(alpha_ptr, alpha, n, ALPHA_PER_SAMPLE)
    else:
        return sigma, alpha


@triton.jit
def _coords(i, s1, s2, s3):
    # Coordinates of logical index i over 4 dims (sizes *, s1, s2, s3), decomposed once and
    # turned into an offset per tensor by _dot4 (x, out and noise have their own strides).
    d3 = i % s3
    r = i // s3
    d2 = r % s2
    r = r // s2
    d1 = r % s1
    d0 = r // s1
    return d0, d1, d2, d3


@triton.jit
def _dot4(d, t0, t1, t2, t3):
    # Memory offset of coordinates d (from _coords) for strides t0..t3.
    return d[0] * t0 + d[1] * t1 + d[2] * t2 + d[3] * t3


@triton.jit
def _mirror(i, n):
    # One reflection without repeating the edge (-1 -> 1, n -> n-2); valid for -n < i < 2n-1.
    # Clamped to [0, n) so that lanes past the image (masked at the store) read valid memory.
    i = tl.where(i < 0, -i, i)
    i = tl.where(i >= n, 2 * n - 2 - i, i)
    return tl.minimum(tl.maximum(i, 0), n - 1)


@triton.jit
def _blur_weights(blur_ptr, radius_ptr, blur_sigma, n, R: tl.constexpr,
                  BLUR_PER_SAMPLE: tl.constexpr, RADIUS_PER_SAMPLE: tl.constexpr):
    """Normalised taps ``w_0 .. w_R`` (``w_-k = w_k``): scalars, or ``[S]`` per-sample vectors.

    A sample whose own radius ``r < R`` gets zero weights beyond ``r`` (and the kernels drop those
    taps, see :func:`_tap`, so a NaN there stays out); the normalisation is over its own
    ``2r + 1`` taps (README, "The contract, in short": the blur). ``blur_sigma = 0`` leaves only
    w_0 = 1.
    """
    if BLUR_PER_SAMPLE:
        bs = tl.load(blur_ptr + n)
    else:
        bs = blur_sigma
    if RADIUS_PER_SAMPLE:
        r = tl.load(radius_ptr + n)
    inv = 1.0 / tl.maximum(2.0 * bs * bs, 1e-30)
    w = (bs * 0.0 + 1.0,)
    norm = bs * 0.0 + 1.0
    for k in tl.static_range(1, R + 1):
        wk = tl.exp(-(k * k) * inv)
        if RADIUS_PER_SAMPLE:
            wk = tl.where(k <= r, wk, 0.0)
        w = w + (wk,)  # type: ignore[assignment]  # grows while Triton unrolls
        norm += 2.0 * wk
    inv_norm = 1.0 / norm
    res = ()
    for k in tl.static_range(R + 1):
        res = res + (w[k] * inv_norm,)  # type: ignore[assignment]  # grows while Triton unrolls
    return res


@triton.jit
def _emit_row(vals, out_base, noise_base, h, c, H, W, plane_elem0, k0, k1, off, sg, al,
              osh, osw, nsh, nsw, rmask, ALIGNED: tl.constexpr, HAS_NOISE: tl.constexpr,
              SHARE: tl.constexpr = False, NOISE_IN: tl.constexpr = False):
    """Finish one output row of a ``[S, BW]`` tile: noise, ``alpha * B(x) + sigma * eps``, store.

    ``vals``: the 4 blurred lanes (``[S, BW]`` each, columns ``c + 0..3``); ``h``: the ``[S]``
    rows; ``plane_elem0``: logical index of each unit's plane start (int64 ``[S]``).
    ``SHARE`` (W % 4 != 0): thread ``q``'s second counter group is thread ``q + 1``'s first,
    taken from it with ``tl.gather`` instead of a second Philox; the last thread of the row only
    supplies its group (its columns belong to the next column block and are not stored).
    ``NOISE_IN``: eps is read from ``noise_base`` (the caller's, any float dtype) instead of drawn.
    """
    if NOISE_IN:
        cols, mask = _row_mask(c, W, rmask, ALIGNED, SHARE)
        o = (h * nsh)[:, None, None] + (cols * nsw)[None, :, :]
        eps = _f32(tl.load(noise_base[:, None, None] + o, mask=mask, other=0.0))
    else:
        eps = _row_normals(c, h, W, plane_elem0, k0, k1, off, ALIGNED, SHARE)
    v0, v1, v2, v3 = vals
    res = al[:, None, None] * _quad(v0, v1, v2, v3) + sg[:, None, None] * eps
    if not NOISE_IN:
        cols, mask = _row_mask(c, W, rmask, ALIGNED, SHARE)
    o = (h * osh)[:, None, None] + (cols * osw)[None, :, :]
    tl.store(out_base[:, None, None] + o, _cast(res, out_base), mask=mask)
    if HAS_NOISE:
        o = (h * nsh)[:, None, None] + (cols * nsw)[None, :, :]
        tl.store(noise_base[:, None, None] + o, _cast(eps, noise_base), mask=mask)


@triton.jit
def _row_mask(c, W, rmask, ALIGNED: tl.constexpr, SHARE: tl.constexpr):
    """``(cols [BW, 4], mask [S, BW, 4])`` of one output row's lanes (see :func:`_emit_row`)."""
    cols = c[:, None] + tl.arange(0, 4)[None, :]  # [BW, 4]
    ok = cols < W
    if SHARE and not ALIGNED:
        ok = ok & (tl.arange(0, c.shape[0]) < c.shape[0] - 1)[:, None]
    return cols, rmask[:, None, None] & ok[None, :, :]


@triton.jit
def _row_normals(c, h, W, plane_elem0, k0, k1, off, ALIGNED: tl.constexpr, SHARE: tl.constexpr):
    """The drawn eps ``[S, BW, 4]`` of one output row's lanes (see :func:`_emit_row`)."""
    idx = (plane_elem0 + h.to(tl.int64) * W)[:, None] + c[None, :]  # logical index of lane 0
    if ALIGNED:
        # W % 4 == 0: the thread's 4 elements are exactly counter group idx / 4.
        e0, e1, e2, e3 = _normals4(off + (idx >> 2), k0, k1)
    else:
        # Lane j is element idx + j of group (idx + j) / 4: two groups cover the 4 lanes.
        a0, a1, a2, a3 = _normals4(off + (idx >> 2), k0, k1)
        if SHARE:
            nxt = tl.broadcast_to(tl.minimum(tl.arange(0, c.shape[0]) + 1, c.shape[0] - 1)[None, :], a0.shape)
            b0 = tl.gather(a0, nxt, 1)
            b1 = tl.gather(a1, nxt, 1)
            b2 = tl.gather(a2, nxt, 1)
            b3 = tl.gather(a3, nxt, 1)
        else:
            b0, b1, b2, b3 = _normals4(off + (idx >> 2) + 1, k0, k1)
        m = (idx & 3).to(tl.int32)
        e0 = tl.where(m == 0, a0, tl.where(m == 1, a1, tl.where(m == 2, a2, a3)))
        e1 = tl.where(m == 0, a1, tl.where(m == 1, a2, tl.where(m == 2, a3, b0)))
        e2 = tl.where(m == 0, a2, tl.where(m == 1, a3, tl.where(m == 2, b0, b1)))
        e3 = tl.where(m == 0, a3, tl.where(m == 1, b0, tl.where(m == 2, b1, b2)))
    return _quad(e0, e1, e2, e3)


@triton.jit
def _units(pid_u, units, strips, planes_per_sample, P1, P2, S: tl.constexpr):
    """The ``[S]`` units of a program: clamped unit, plane, first row index in strips, sample,
    the plane's coordinates over its (at most 3) coalesced dims, and the valid-unit mask."""
    u = pid_u * S + tl.arange(0, S)
    umask = u < units
    u = tl.minimum(u, units - 1)
    plane = u // strips
    strip = u - plane * strips
    n = plane // planes_per_sample
    pd2 = plane % P2
    rest = plane // P2
    pd1 = rest % P1
    pd0 = rest // P1
    return umask, plane, strip, n, pd0.to(tl.int64), pd1.to(tl.int64), pd2.to(tl.int64)


# ------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _mollify_noise_kernel(
    x_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr,
    sigma, alpha, seed_lo, seed_hi, off_lo, off_hi, words_ptr, numel, sample_numel,
    s1, s2, s3,
    xs0, xs1, xs2, xs3, os0, os1, os2, os3, ns0, ns1, ns2, ns3, in_scale, in_shift,
    CONTIG: tl.constexpr, HAS_NOISE: tl.constexpr, IDX64: tl.constexpr, GROUP_ROWS: tl.constexpr,
    SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr,
    BLOCK: tl.constexpr, MAP: tl.constexpr, DEQUANT: tl.constexpr, NOISE_IN: tl.constexpr, WORDS: tl.constexpr,
):
    """``out[i] = alpha[n(i)] * x[i] + sigma[n(i)] * eps[i]`` over logical indices ``i``.

    A ``[BLOCK, 4]`` tile: row ``g`` is counter group ``pid * BLOCK + g`` and its 4 consecutive
    logical elements, held by one thread. Index math is int32 unless ``IDX64`` (numel or an
    offset beyond 2**31). Strided layouts: with ``GROUP_ROWS`` (innermost size % 4 == 0) the 4
    lanes share their outer coordinates, so the index is decomposed once per group (int32
    divisions per element spilled to 255 registers in int64 before). ``NOISE_IN``: eps is read
    from ``noise_ptr`` (the caller's, any float dtype) instead of drawn: no Philox.

    ``MAP``: x (uint8 or floating) goes through :func:`_map_in` first, ``DEQUANT`` adding the
    uniforms of counter group ``offset + ceil(numel / 4) + g`` (README, "The noise stream").
    (``MAP`` and ``NOISE_IN`` never meet: mollify maps x into a temporary first then.)
    """
    k0, k1, off = _stream_key(seed_lo, seed_hi, off_lo, off_hi, words_ptr, WORDS)
    pid = tl.program_id(0)
    if IDX64:
        g = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        g = pid * BLOCK + tl.arange(0, BLOCK)
    if NOISE_IN:
        zero = tl.zeros([BLOCK], tl.float32)  # eps is read per lane below
        z0, z1, z2, z3 = zero, zero, zero, zero
    else:
        z0, z1, z2, z3 = _normals4(off + g, k0, k1)
    if DEQUANT:
        u0, u1, u2, u3 = _uniforms4(off + ((numel + 3) // 4) + g, k0, k1)
    else:
        u0, u1, u2, u3 = z0, z1, z2, z3  # unused without DEQUANT
    i0 = 4 * g
    if CONTIG:
        i = i0[:, None] + tl.arange(0, 4)[None, :]
        mask = i < numel
        if NOISE_IN:
            eps = _f32(tl.load(noise_ptr + i, mask=mask, other=0.0))
        else:
            eps = _quad(z0, z1, z2, z3)
        s, a = _params_at(i, numel, sample_numel, sigma_ptr, alpha_ptr, sigma, alpha,
                          SIGMA_PER_SAMPLE, ALPHA_PER_SAMPLE)
        x = _f32(tl.load(x_ptr + i, mask=mask, other=0))
        x = _map_in(x, _quad(u0, u1, u2, u3), in_scale, in_shift, MAP, DEQUANT)
        res = a * x + s * eps
        tl.store(out_ptr + i, _cast(res, out_ptr), mask=mask)
        if HAS_NOISE:
            tl.store(noise_ptr + i, _cast(eps, noise_ptr), mask=mask)
    else:
        # Strided: the 4 lanes as four [BLOCK] vectors, in the layout the Philox outputs already
        # have. A [BLOCK, 4] tile with scalar (strided) accesses made Triton 3.8 pick a layout
        # that shuffles every lane: 118 registers and 119.5 SASS instructions per element for
        # channels_last float32 (Triton 3.6 compiled the same source to 72.5).
        bx = i0 * 0
        bo = bx
        bn = bx
        if GROUP_ROWS:
            d = _coords(i0, s1, s2, s3)
            bx = _dot4(d, xs0, xs1, xs2, xs3)
            bo = _dot4(d, os0, os1, os2, os3)
            bn = _dot4(d, ns0, ns1, ns2, ns3)
        lanes = (z0, z1, z2, z3)
        ulanes = (u0, u1, u2, u3)
        for j in tl.static_range(4):
            _strided_lane(lanes[j], j, i0, bx, bo, bn, x_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr, sigma, alpha,
                          numel, sample_numel, s1, s2, s3, xs0, xs1, xs2, xs3, os0, os1, os2, os3,
                          ns0, ns1, ns2, ns3, HAS_NOISE, GROUP_ROWS, SIGMA_PER_SAMPLE, ALPHA_PER_SAMPLE,
                          ulanes[j], in_scale, in_shift, MAP, DEQUANT, NOISE_IN)


@triton.jit
def _strided_lane(z, j: tl.constexpr, i0, bx, bo, bn, x_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr, sigma, alpha,
                  numel, sample_numel, s1, s2, s3, xs0, xs1, xs2, xs3, os0, os1, os2, os3, ns0, ns1, ns2, ns3,
                  HAS_NOISE: tl.constexpr, GROUP_ROWS: tl.constexpr, SIGMA_PER_SAMPLE: tl.constexpr,
                  ALPHA_PER_SAMPLE: tl.constexpr, u, in_scale, in_shift, MAP: tl.constexpr,
                  DEQUANT: tl.constexpr, NOISE_IN: tl.constexpr):
    """Lane ``j`` (element ``4 g + j``) of each group ``g`` of the noise kernel's strided path."""
    i = i0 + j
    mask = i < numel
    s, a = _params_at(i, numel, sample_numel, sigma_ptr, alpha_ptr, sigma, alpha, SIGMA_PER_SAMPLE, ALPHA_PER_SAMPLE)
    if GROUP_ROWS:
        # Innermost size % 4 == 0: the group's 4 lanes share their outer coordinates.
        ox = bx + j * xs3
        oo = bo + j * os3
        on = bn + j * ns3
    else:
        d = _coords(i, s1, s2, s3)
        ox = _dot4(d, xs0, xs1, xs2, xs3)
        oo = _dot4(d, os0, os1, os2, os3)
        on = _dot4(d, ns0, ns1, ns2, ns3)
    if NOISE_IN:
        z = _f32(tl.load(noise_ptr + on, mask=mask, other=0.0))
    x = _map_in(_f32(tl.load(x_ptr + ox, mask=mask, other=0)), u, in_scale, in_shift, MAP, DEQUANT)
    tl.store(out_ptr + oo, _cast(a * x + s * z, out_ptr), mask=mask)
    if HAS_NOISE:
        tl.store(noise_ptr + on, _cast(z, noise_ptr), mask=mask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _mollify_blur_kernel(
    x_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr, blur_ptr, radius_ptr,
    sigma, alpha, blur_sigma, seed_lo, seed_hi, off_lo, off_hi, words_ptr,
    H, W, units, strips, col_blocks, planes_per_sample, P1, P2,
    xs0, xs1, xs2, xsh, xsw, os0, os1, os2, osh, osw, ns0, ns1, ns2, nsh, nsw,
    R: tl.constexpr, TILE_H: tl.constexpr, S: tl.constexpr, BW: tl.constexpr, ALIGNED: tl.constexpr,
    HAS_NOISE: tl.constexpr, SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr,
    BLUR_PER_SAMPLE: tl.constexpr, RADIUS_PER_SAMPLE: tl.constexpr, NOISE_IN: tl.constexpr,
    WORDS: tl.constexpr,
):
    """Fused separable blur (radius ``R``, mirrored) + noise; see the module docstring.

    Grid: 1-D, ``cdiv(units, S) * col_blocks`` programs (no axis limited to 65,535). A unit is
    ``(plane, strip)``, a strip ``TILE_H`` rows; row/column math is int32 inside a plane.
    """
    k0, k1, off = _stream_key(seed_lo, seed_hi, off_lo, off_hi, words_ptr, WORDS)
    pid = tl.program_id(0)
    pid_c = pid % col_blocks
    umask, plane, strip, n, pd0, pd1, pd2 = _units(pid // col_blocks, units, strips, planes_per_sample, P1, P2, S)
    h0 = strip * TILE_H
    x_base = x_ptr + (pd0 * xs0 + pd1 * xs1 + pd2 * xs2)
    out_base = out_ptr + (pd0 * os0 + pd1 * os1 + pd2 * os2)
    noise_base = noise_ptr + (pd0 * ns0 + pd1 * ns1 + pd2 * ns2)
    plane_elem0 = plane.to(tl.int64) * H * W
    if ALIGNED:
        c = (pid_c * BW + tl.arange(0, BW)) * 4  # first column of each thread's 4
    else:
        c = (pid_c * (BW - 1) + tl.arange(0, BW)) * 4  # the last thread only lends its counter group
    w = _blur_weights(blur_ptr, radius_ptr, blur_sigma, n, R, BLUR_PER_SAMPLE, RADIUS_PER_SAMPLE)
    if RADIUS_PER_SAMPLE:
        reach = _reach(blur_ptr, radius_ptr, n, BLUR_PER_SAMPLE)[:, None]  # [S, 1]: taps k <= reach count
    else:
        reach = R
    sg = _param(sigma_ptr, sigma, n, SIGMA_PER_SAMPLE) + tl.zeros((S,), tl.float32)
    al = _param(alpha_ptr, alpha, n, ALPHA_PER_SAMPLE) + tl.zeros((S,), tl.float32)
    # Mirrored column offsets of the 4 + 2R columns a thread reads, once per program: the
    # same for every row (no division or modulo per tap).
    cols = ()
    for e in tl.static_range(4 + 2 * R):
        cols = cols + ((_mirror(c + (e - R), W) * xsw)[None, :],)  # type: ignore[assignment]  # grows while Triton unrolls
    rows = ()  # width-blurred source rows, 4 lanes each; only the last 2R + 1 stay live
    for t in tl.static_range(TILE_H + 2 * R):
        src = _mirror(h0 + (t - R), H)
        rp = (x_base + src * xsh)[:, None]
        v = ()
        for e in tl.static_range(4 + 2 * R):
            v = v + (_f32(tl.load(rp + cols[e])),)  # type: ignore[assignment]  # grows while Triton unrolls
        lanes = ()
        for j in tl.static_range(4):
            acc = _bc(w[0], S) * v[j + R]
            for k in tl.static_range(1, R + 1):
                acc += _tap(_bc(w[k], S) * (v[j + R - k] + v[j + R + k]), k, reach, RADIUS_PER_SAMPLE)
            lanes = lanes + (acc,)  # type: ignore[assignment]  # grows while Triton unrolls
        rows = rows + (lanes,)  # type: ignore[assignment]  # grows while Triton unrolls
        if t >= 2 * R:
            # Output row t - 2R of the strip, from source rows t - 2R .. t (indices stay
            # expressions of t: a local name would not be a constexpr to the compiler).
            vals = ()
            for j in tl.static_range(4):
                acc = _bc(w[0], S) * rows[t - R][j]
                for k in tl.static_range(1, R + 1):
                    acc += _tap(_bc(w[k], S) * (rows[t - R - k][j] + rows[t - R + k][j]), k, reach,
                                RADIUS_PER_SAMPLE)
                vals = vals + (acc,)  # type: ignore[assignment]  # grows while Triton unrolls
            h = h0 + (t - 2 * R)
            _emit_row(vals, out_base, noise_base, h, c, H, W, plane_elem0, k0, k1, off, sg, al,
                      osh, osw, nsh, nsw, umask & (h < H), ALIGNED, HAS_NOISE, True, NOISE_IN)


@triton.jit
def _reach(blur_ptr, radius_ptr, n, BLUR_PER_SAMPLE: tl.constexpr):
    """Per-sample radius ``[S]`` that the taps may read: the sample's own radius, 0 where its
    blur sigma is 0 (the identity reads no neighbour, whatever ``blur_radius`` says)."""
    r = tl.load(radius_ptr + n)
    if BLUR_PER_SAMPLE:
        r = tl.where(tl.load(blur_ptr + n) == 0.0, 0, r)
    return r


@triton.jit
def _tap(t, k, reach, MASKED: tl.constexpr):
    # A tap's term, dropped (not multiplied by a zero weight) beyond a sample's own reach: a
    # NaN or inf there would otherwise poison the whole window of the widest sample (0 * NaN).
    if MASKED:
        t = tl.where(k <= reach, t, 0.0)
    return t


@triton.jit
def _bc(v, S: tl.constexpr):
    # A weight as a [S, 1] column: per-sample weights are [S] vectors, scalars broadcast.
    return (v + tl.zeros((S,), tl.float32))[:, None]


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _mollify_blur_axis_kernel(
    src_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr, blur_ptr, radius_ptr,
    sigma, alpha, blur_sigma, seed_lo, seed_hi, off_lo, off_hi, words_ptr, radius,
    H, W, units, col_blocks, planes_per_sample, P1, P2,
    ss0, ss1, ss2, ssh, ssw, os0, os1, os2, osh, osw, ns0, ns1, ns2, nsh, nsw,
    ALONG_H: tl.constexpr, FINAL: tl.constexpr, S: tl.constexpr, BW: tl.constexpr, ALIGNED: tl.constexpr,
    HAS_NOISE: tl.constexpr, SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr,
    BLUR_PER_SAMPLE: tl.constexpr, RADIUS_PER_SAMPLE: tl.constexpr, NOISE_IN: tl.constexpr,
    WORDS: tl.constexpr,
):
    """One 1-D pass of the blur for radii beyond ``FUSED_MAX_RADIUS`` (dynamic tap loop).

    Width pass (``ALONG_H=False``, ``FINAL=False``): float32 scratch = taps along W of x.
    Height pass (``ALONG_H=True``, ``FINAL=True``): taps along H of the scratch, then noise and
    ``alpha * B(x) + sigma * eps`` as in the fused kernel. A unit is one row of one plane.
    """
    k0, k1, off = _stream_key(seed_lo, seed_hi, off_lo, off_hi, words_ptr, WORDS)
    pid = tl.program_id(0)
    pid_c = pid % col_blocks
    umask, plane, h, n, pd0, pd1, pd2 = _units(pid // col_blocks, units, H, planes_per_sample, P1, P2, S)
    src_base = src_ptr + (pd0 * ss0 + pd1 * ss1 + pd2 * ss2)
    out_base = out_ptr + (pd0 * os0 + pd1 * os1 + pd2 * os2)
    c = (pid_c * BW + tl.arange(0, BW)) * 4
    if BLUR_PER_SAMPLE:
        bs = tl.load(blur_ptr + n)
    else:
        bs = blur_sigma + tl.zeros((S,), tl.float32)
    if RADIUS_PER_SAMPLE:
        r = _reach(blur_ptr, radius_ptr, n, BLUR_PER_SAMPLE)
    else:
        r = radius + tl.zeros((S,), tl.int32)
    inv = 1.0 / tl.maximum(2.0 * bs * bs, 1e-30)
    # `while`, not `for k in range(-radius, ...)`: Triton 3.6's interpreter cannot take a
    # runtime range bound under NumPy 2 (int() of a 1-element array); compiled, both are loops.
    norm = tl.zeros((S,), tl.float32)
    k = -radius
    while k <= radius:
        norm += tl.where((k <= r) & (k >= -r), tl.exp(-(k * k) * inv), 0.0)
        k += 1
    lanes = tl.arange(0, 4)
    acc = tl.zeros((S, BW, 4), tl.float32)
    k = -radius
    while k <= radius:
        wk = tl.where((k <= r) & (k >= -r), tl.exp(-(k * k) * inv), 0.0) / norm
        if ALONG_H:
            o = (_mirror(h + k, H) * ssh)[:, None, None] + ((c[:, None] + lanes[None, :]) * ssw)[None, :, :]
        else:
            o = (h * ssh)[:, None, None] + (_mirror(c[:, None] + lanes[None, :] + k, W) * ssw)[None, :, :]
        acc += _tap(wk[:, None, None] * _f32(tl.load(src_base[:, None, None] + o)), tl.abs(k),
                    r[:, None, None], RADIUS_PER_SAMPLE)
        k += 1
    if FINAL:
        noise_base = noise_ptr + (pd0 * ns0 + pd1 * ns1 + pd2 * ns2)
        sg = _param(sigma_ptr, sigma, n, SIGMA_PER_SAMPLE) + tl.zeros((S,), tl.float32)
        al = _param(alpha_ptr, alpha, n, ALPHA_PER_SAMPLE) + tl.zeros((S,), tl.float32)
        # acc[..., 2i + j]: split j (lanes 0, 2 | 1, 3), then i.
        even, odd = tl.split(tl.reshape(acc, (S, BW, 2, 2)))
        a0, a2 = tl.split(even)
        a1, a3 = tl.split(odd)
        _emit_row((a0, a1, a2, a3), out_base, noise_base, h, c, H, W, plane.to(tl.int64) * H * W, k0, k1, off,
                  sg, al, osh, osw, nsh, nsw, umask, ALIGNED, HAS_NOISE, False, NOISE_IN)
    else:
        cols = c[:, None] + lanes[None, :]
        o = (h * osh)[:, None, None] + (cols * osw)[None, :, :]
        mask = umask[:, None, None] & (cols < W)[None, :, :]
        tl.store(out_base[:, None, None] + o, acc, mask=mask)


# ------------------------------------------------------------------------------------------
# Host: plan, then launch
# ------------------------------------------------------------------------------------------


def maps_input(x: torch.Tensor, out: torch.Tensor, p: Params) -> bool:
    """The noise kernel applies the input map itself (uint8 or floating x, float32 compute);
    a blur with a map runs on the mapped temporary (``_op._run_mapped``)."""
    return p.blur is None


def _pad(v: List[int], n: int, fill: int) -> List[int]:
    return [fill] * (n - len(v)) + list(v)


def _contiguous_strides(shape) -> tuple:
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(st))


def _max_offset(sizes, strides) -> int:
    return sum((s - 1) * abs(t) for s, t in zip(sizes, strides))


@functools.lru_cache(maxsize=512)
def _noise_layout(shape: tuple, strides: tuple):
    """``(sizes[4], strides per tensor [3][4], contig, idx64, group_rows)`` or None (> 4 dims)."""
    sizes, st = coalesce(list(shape), [list(s) for s in strides])
    if len(sizes) > MAX_DIMS:
        return None
    contig = len(sizes) == 1 and all(s[0] == 1 for s in st)
    numel = 1
    for s in shape:
        numel *= s
    idx64 = numel + 4 > INT32_MAX or any(_max_offset(sizes, s) > INT32_MAX for s in st)
    sizes = _pad(sizes, MAX_DIMS, 1)
    st = [_pad(s, MAX_DIMS, 0) for s in st] + [[0] * MAX_DIMS] * (3 - len(st))
    return tuple(sizes), tuple(tuple(s) for s in st), contig, idx64, sizes[-1] % 4 == 0


@functools.lru_cache(maxsize=512)
def _blur_layout(shape: tuple, strides: tuple):
    """``(planes, (P1, P2), strides per tensor [3][5])`` or None (> 3 plane dims)."""
    lead, lead_st = coalesce(list(shape[:-2]), [list(s[:-2]) for s in strides])
    if len(lead) > MAX_PLANE_DIMS:
        return None
    H, W = shape[-2:]
    for s in strides:
        if (H - 1) * abs(s[-2]) + (W - 1) * abs(s[-1]) > INT32_MAX:
            raise ValueError(f"mollify: a plane of x spans more than 2**31 elements (H={H}, W={W}); "
                             "the triton backend indexes planes in int32: use backend='cuda'")
    planes = 1
    for s in lead:
        planes *= s
    lead = _pad(lead, MAX_PLANE_DIMS, 1)
    st = [tuple(_pad(ls, MAX_PLANE_DIMS, 0) + list(s[-2:])) for ls, s in zip(lead_st, strides)]
    st += [(0,) * 5] * (3 - len(st))
    return planes, (lead[1], lead[2]), tuple(st)


@functools.lru_cache(maxsize=512)
def _blur_tiles(H: int, W: int, planes: int, fused: bool, share: bool = False):
    """``(BW, S, TILE_H, strips, units, col_blocks)``: threads ``[S, BW]``, 4 columns each.

    ``BW`` (threads across, a power of 2 from 4 to ``THREADS``) is the one that launches the
    fewest programs, counting both idle lanes past ``W`` and idle units past the last plane
    (ties: the widest): W = 48 over many planes takes 3 blocks of 16 columns, not one of 64 with
    a quarter idle. ``share`` (W % 4 != 0): a block's last thread only lends its counter group,
    so a block covers ``4 (BW - 1)`` columns. Fused: ``TILE_H`` balances the strips (H = 17 runs
    2 strips of 9 rows, not 16 + 1 that both blur 16 + 2R source rows).
    """
    groups = -(-W // 4)
    if fused:
        strips = -(-H // BLUR_TILE_H)
        tile_h = -(-H // strips)
    else:
        strips, tile_h = H, 1
    units = planes * strips
    best = None
    bw = 4
    while bw <= THREADS:
        cb = -(-groups // (bw - share))  # share: the last thread of a block lends its group only
        cost = -(-units // (THREADS // bw)) * cb
        if best is None or cost <= best[0]:
            best = (cost, bw, cb)
        if bw - share >= groups:
            break
        bw *= 2
    assert best is not None  # the loop runs at least once (4 <= THREADS)
    _, bw, cb = best
    return bw, THREADS // bw, tile_h, strips, units, cb


@dataclass(frozen=True)
class Launch:
    """One kernel launch, fully specified: ``kernel[grid](*args, **constexprs, **options)``.

    The plan/launch split lets tools compile every launch variant with exactly the
    specialisation a real call gets (benchmarks/sass/report.py) without a GPU.
    """

    kernel: "triton.JITFunction"  # the @triton.jit function
    grid: tuple  # ints
    args: tuple  # positional runtime args in kernel order (tensors, ints, floats), without constexprs
    constexprs: dict  # name -> value for every tl.constexpr parameter
    options: dict  # e.g. {"num_warps": 4, "num_stages": 1}
    elements: int  # logical output elements this launch writes


def _fused_options(R: int, itemsize: int, plain: bool) -> dict:
    """Launch options of the fused blur: ``maxnreg`` caps ptxas' register budget where that was
    checked to cost no spill (sm_90 SASS, Triton 3.8, MODELED effect). Uncapped, ptxas hoists
    loads of later rows: float32 R = 3 took 94 registers (5 blocks of 128 threads per SM), capped
    80 (6 blocks) with no spill and 82.5 instead of 82.2 instructions per element. Only
    ``plain`` launches (W % 16 == 0, unit stride along W, scalar parameters, no returned noise)
    are capped: at 80 the per-sample, channels_last and odd-width R = 3 variants spilled
    88-248 bytes; with a width that is not a multiple of 16 Triton drops its divisibility hint
    for ``W`` and the row strides, the address math grows, and float32 R = 3 capped at 80
    spilled 372 bytes at 28 x 28 (MNIST) and 332 at 64 x 40."""
    cap = FUSED_MAXNREG.get((R, itemsize)) if plain else None
    return {"num_warps": NUM_WARPS} if cap is None else {"num_warps": NUM_WARPS, "maxnreg": cap}


def _halves(v: int) -> Tuple[int, int]:
    """A 64-bit unsigned value as (low, high) int32 values (bits reinterpreted as signed)."""
    v = to_unsigned64(v)
    lo, hi = v & 0xFFFFFFFF, v >> 32
    return lo - (1 << 32) if lo >= 1 << 31 else lo, hi - (1 << 32) if hi >= 1 << 31 else hi


def _plan_full(x, out, noise, p: Params, stream, noise_in: bool = False
               ) -> Tuple[List[Launch], List[Tuple[torch.Tensor, torch.Tensor]]]:
    """The launches for one call, and the ``(dst, src)`` copies to run after them.

    ``noise_in``: ``noise`` is the caller's eps (any float dtype, any strides), read instead of
    drawn (the kernels' ``NOISE_IN``); nothing is written to it and the stream is not used.

    A layout the kernels cannot index (more than 4 coalesced dims for the noise, or 3 plane
    dims for the blur) is planned on contiguous copies ``xc = x.contiguous()``, ``oc``/``nc =
    torch.empty_like(xc)`` (same logical order, so the same noise); the copies back into
    ``out``/``noise`` are returned as ``(dst, src)`` pairs. Touches no GPU for CPU tensors.
    """
    words = isinstance(stream, DeviceStream)
    if words:  # the kernels read [key, offset] from stream.words (README, "CUDA graphs")
        seed = offset = 0
    else:
        assert stream is not None, "only the torch backend draws from PyTorch's RNG (stream None)"
        seed, offset = stream
    stream_args = _halves(seed) + _halves(offset) + (stream.words if words else out,)
    numel = x.numel()
    tensors = (x, out) if noise is None else (x, out, noise)
    strides = tuple(t.stride() for t in tensors)
    blur = p.blur is not None
    two_pass = blur and p.max_radius > FUSED_MAX_RADIUS
    if two_pass:
        # The two passes also index a float32 scratch in x's logical order (contiguous): its
        # plane offsets must come from the same plane decomposition as x's and out's, so its
        # strides join the layout (a slot 3 after x, out and noise; out's strides stand in for
        # an absent noise, which adds no constraint).
        strides = strides[:2] + (strides[2] if noise is not None else strides[1], _contiguous_strides(x.shape))
    layout = _blur_layout(tuple(x.shape), strides) if blur else _noise_layout(tuple(x.shape), strides)
    if layout is None:
        xc = x.contiguous()
        oc = torch.empty_like(xc, dtype=out.dtype)
        if noise_in:
            launches, _ = _plan_full(xc, oc, noise.contiguous(), p, stream if words else (seed, offset), True)
            return launches, [(out, oc)]
        nc = torch.empty_like(xc, dtype=noise.dtype) if noise is not None else None
        launches, _ = _plan_full(xc, oc, nc, p, stream if words else (seed, offset))
        return launches, [(out, oc)] + ([(noise, cast(torch.Tensor, nc))] if noise is not None else [])
    dummy = out  # any pointer for the per-sample slots that a constexpr flag disables
    sig_t, al_t = torch.is_tensor(p.sigma), torch.is_tensor(p.alpha)
    sig_p = p.sigma if sig_t else dummy
    al_p = p.alpha if al_t else dummy
    sig = 0.0 if sig_t else float(p.sigma)
    al = 0.0 if al_t else float(p.alpha)
    noise_p = noise if noise is not None else dummy
    writes_noise = noise is not None and not noise_in
    opts = {"num_warps": NUM_WARPS}
    if not blur:
        sizes, (xs, os_, ns), contig, idx64, group_rows = layout
        grid = (-(-(-(-numel // 4)) // NOISE_BLOCK),)
        args = (x, out, noise_p, sig_p, al_p, sig, al, *stream_args, numel, numel // x.shape[0],
                sizes[1], sizes[2], sizes[3], *xs, *os_, *ns, p.in_scale, p.in_shift)
        consts = dict(CONTIG=contig, HAS_NOISE=writes_noise, IDX64=idx64, GROUP_ROWS=group_rows,
                      SIGMA_PER_SAMPLE=sig_t, ALPHA_PER_SAMPLE=al_t, BLOCK=NOISE_BLOCK, MAP=False, DEQUANT=False,
                      NOISE_IN=noise_in, WORDS=words)
        if p.maps(x, out):
            # Separate roundings of the map's sum, product and shift, as the reference.
            consts.update(MAP=True, DEQUANT=p.dequant)
            opts = dict(opts, enable_fp_fusion=False)
        return [Launch(_mollify_noise_kernel, grid, args, consts, opts, numel)], []
    H, W = x.shape[-2:]
    assert x.dim() >= 3, "mollify validates a blur's rank (>= 3 dims) before any backend"
    if p.max_radius >= min(H, W):
        raise ValueError(
            f"mollify: the triton blur kernels mirror once, so they need blur radius < min(H, W) = {min(H, W)}, "
            f"got radius {p.max_radius}; larger radii must be routed to another backend")
    planes, (P1, P2), (xs, os_, ns) = layout[0], layout[1], layout[2][:3]
    bl_t, rad_t = torch.is_tensor(p.blur), torch.is_tensor(p.radius)
    bl_p = p.blur if bl_t else dummy
    rad_p = p.radius if rad_t else dummy
    assert p.blur is not None  # a blur call
    bl = 0.0 if bl_t else float(p.blur)
    R = int(p.max_radius)
    pps = planes // x.shape[0]
    common = dict(ALIGNED=W % 4 == 0, HAS_NOISE=writes_noise, SIGMA_PER_SAMPLE=sig_t, ALPHA_PER_SAMPLE=al_t,
                  BLUR_PER_SAMPLE=bl_t, RADIUS_PER_SAMPLE=rad_t, NOISE_IN=noise_in, WORDS=words)
    head = (sig_p, al_p, bl_p, rad_p, sig, al, bl, *stream_args)
    if R <= FUSED_MAX_RADIUS:
        bw, s, tile_h, strips, units, cb = _blur_tiles(H, W, planes, True, W % 4 != 0)
        grid = (-(-units // s) * cb,)
        args = (x, out, noise_p, *head, H, W, units, strips, cb, pps, P1, P2, *xs, *os_, *ns)
        consts = dict(R=R, TILE_H=tile_h, S=s, BW=bw, **common)
        plain = W % 16 == 0 and noise is None and not (sig_t or al_t or bl_t or rad_t) and xs[4] == os_[4] == 1
        return [Launch(_mollify_blur_kernel, grid, args, consts, _fused_options(R, x.element_size(), plain),
                       numel)], []
    # Two passes through a float32 scratch in x's logical order (contiguous), indexed with
    # its own strides over the plane dims shared with x and out (see two_pass above).
    bw, s, _, _, units, cb = _blur_tiles(H, W, planes, False)
    grid = (-(-units // s) * cb,)
    scratch = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    sc_st = layout[2][3]
    tail = (H, W, units, cb, pps, P1, P2)
    width = Launch(_mollify_blur_axis_kernel, grid,
                   (x, scratch, scratch, *head, R, *tail, *xs, *sc_st, *sc_st),
                   dict(ALONG_H=False, FINAL=False, S=s, BW=bw, **common), opts, numel)
    height = Launch(_mollify_blur_axis_kernel, grid,
                    (scratch, out, noise_p, *head, R, *tail, *sc_st, *os_, *ns),
                    dict(ALONG_H=True, FINAL=True, S=s, BW=bw, **common), opts, numel)
    return [width, height], []


def _plan(x, out, noise, p: Params, stream) -> List[Launch]:
    """The kernel launches that write ``out`` (and ``noise``) for one call; see :class:`Launch`.

    If the layout needs contiguous copies (see :func:`_plan_full`), the launches write those
    copies; :func:`mollify_triton` copies them back. Raises ValueError for a blur radius
    ``>= min(H, W)`` (the kernels mirror once; such calls are routed to another backend).
    """
    return _plan_full(x, out, noise, p, stream)[0]


# Per-call host cost. ``kernel[grid](...)`` goes through Triton's JIT dispatcher on every call:
# bind ~45 arguments, derive their specialisation, build and look up the cache key, then launch.
# On an H100 host (Triton 3.6) a 256x3x32x32 call took 90-220 us against 21 us for x.clone().
# After the first call of a specialisation the dispatcher only ever finds the same compiled
# kernel again, so it is kept here, keyed by everything Triton specialises on, and later calls
# launch it exactly as ``JITFunction.run`` does after binding (Triton 3.6, 3.7 and 3.8 have the
# same code there). Anything unexpected on that path turns it off for the process.
_COMPILED: Dict[tuple, Any] = {}  # (kernel, device, constexprs, options, argument specialisation) -> CompiledKernel
_FAST: Dict[str, Union[bool, str, None]] = {"on": True, "error": None}  # "error": why the fast path was turned off, for diagnosis


@functools.lru_cache(maxsize=None)
def _kernel_layout(kernel) -> Optional[Tuple[frozenset, tuple]]:
    """``(positions of do_not_specialize arguments, constexpr names in order)`` of a kernel whose
    constexpr parameters all follow its runtime ones (ours do), else None (no fast path)."""
    params = kernel.params
    runtime = [p for p in params if not p.is_constexpr]
    if any(p.is_constexpr for p in params[:len(runtime)]):
        return None
    return (frozenset(i for i, p in enumerate(runtime) if p.do_not_specialize),
            tuple(p.name for p in params[len(runtime):]))


def _getter(idx):
    # operator.itemgetter that always returns a tuple (one C call instead of a Python loop).
    idx = tuple(idx)
    if len(idx) >= 2:
        return operator.itemgetter(*idx)
    return (lambda a: (a[idx[0]],)) if idx else (lambda a: ())


def _int_kind(v: int) -> int:
    # Triton types a non-specialised int by its range only: i32, i64 or u64.
    return 0 if -2**31 <= v < 2**31 else (1 if -2**63 <= v < 2**63 else 2)


@functools.lru_cache(maxsize=256)
def _arg_roles(kernel, types: tuple):
    """Getters for the arguments of a kernel called with these argument types: tensors, ints
    Triton specialises (value 1, multiple of 16, width), do_not_specialize ints (width only),
    and the constexpr values in signature order. None when the fast path does not apply."""
    layout = _kernel_layout(kernel)
    if layout is None:
        return None
    dns, const = layout
    tensors = [i for i, t in enumerate(types) if issubclass(t, torch.Tensor)]
    ints = [i for i, t in enumerate(types) if i not in dns and not issubclass(t, (torch.Tensor, float))]
    return _getter(tensors), _getter(ints), _getter(sorted(dns)), _getter(const)


def _spec_key(L: Launch, device, types: tuple, roles) -> tuple:
    """Everything Triton's binder specialises a launch on, as a hashable key: tensor dtypes and
    16-byte alignment, int values (a superset of Triton's value-1 / multiple-of-16 / width
    properties; ours come from shapes and strides), only the width of do_not_specialize ints
    (the stream), floats by type alone; plus the constexprs, options and device."""
    tensors, ints, dns, _ = roles
    a = L.args
    return (L.kernel, device, types, tuple(L.constexprs.items()), tuple(L.options.items()), ints(a),
            tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors(a)]), tuple(map(_int_kind, dns(a))))


def _jit_launch(L: Launch):
    """Triton's own dispatcher (binds, specialises, compiles on first use, launches); returns
    the ``CompiledKernel`` it launched."""
    return L.kernel[L.grid](*L.args, **L.constexprs, **L.options)


def _current_stream():
    # What JITFunction.run launches on: the current device's current (torch) stream.
    from triton.runtime.driver import driver

    return driver.active.get_current_stream(driver.active.get_current_device())


def _compiled_launch(ck, L: Launch, tail: tuple) -> None:
    """``JITFunction.run`` after binding (Triton 3.6-3.8): canonical grid, launch metadata for
    the launch hooks, then the compiled launcher with every parameter (constexprs included) in
    signature order."""
    from triton import knobs

    stream = _current_stream()
    grid = L.grid
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    args = L.args + tail
    meta = ck.launch_metadata(grid, stream, *args)
    ck.run(grid[0], g1, g2, stream, ck.function, ck.packed_metadata, meta,
           knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *args)


def _launch(launches: List[Launch], device=None) -> None:
    """Run the launches in order: through the kept ``CompiledKernel`` when this specialisation
    already ran on ``device`` (see ``_COMPILED``), else through Triton's dispatcher. The
    interpreter (TRITON_INTERPRET=1) always takes the dispatcher."""
    fast = _FAST["on"] and not _interpret()
    for L in launches:
        types = tuple(map(type, L.args)) if fast else None
        roles = _arg_roles(L.kernel, types) if fast else None
        if roles is None:
            _jit_launch(L)
            continue
        assert types is not None  # roles come only with the fast path, which sets types
        key = _spec_key(L, device, types, roles)
        ck = _COMPILED.get(key)
        if ck is not None:
            try:
                _compiled_launch(ck, L, roles[3](L.constexprs))
                continue
            except Exception as e:  # noqa: BLE001 - any surprise: Triton's own path from now on
                _FAST["on"], _FAST["error"] = False, f"{type(e).__name__}: {e}"
                fast = False
                _COMPILED.clear()
        ck = _jit_launch(L)
        if fast and ck is not None:
            _COMPILED[key] = ck


def mollify_triton(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor], p: Params, stream,
                   noise_in: bool = False) -> None:
    launches, copies = _plan_full(x, out, noise, p, stream, noise_in)
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        # Triton launches on the current device's current stream: make that x's device.
        with torch.cuda.device(x.device):
            _launch(launches, x.device.index)
    else:
        _launch(launches, x.device.index)
    for dst, src in copies:
        dst.copy_(src)

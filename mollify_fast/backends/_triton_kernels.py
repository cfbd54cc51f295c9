"""Device code of the ``triton`` backend: its ``@triton.jit`` helpers and three kernels.

Only ``tl`` names Triton 3.6 has (the backend supports 3.6 to 3.8), and the Philox pieces of
``tl.randn4x`` (``philox_impl``, ``uint_to_uniform_float``, ``pair_uniform_to_normal``) called
directly, so the normals are exactly ``tl.randn4x(seed, offset + j)`` (README, "The contract, in
short": the noise stream). Grids, constexprs and launch options come from the launch plan
(``_triton_plan``, which also defines the sizes named here: ``NOISE_BLOCK``,
``FUSED_MAX_RADIUS``).

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

import os

import triton
import triton.language as tl
from triton.language.random import philox_impl, uint_to_uniform_float

# Under TRITON_INTERPRET=1 (read once, at import, like Triton itself), round float32 ->
# bfloat16 from the bits (see _cast); compiled kernels keep Triton's own conversion.
_EXACT_BF16 = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


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
def _params_at(i, numel, sample_numel, params, SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr):
    # (sigma, alpha) of logical indices i: gathered per sample (n = i // sample_numel, clamped
    # for masked lanes past the end), or the scalars. params: (sigma_ptr, alpha_ptr, sigma, alpha).
    sigma_ptr, alpha_ptr, sigma, alpha = params
    if SIGMA_PER_SAMPLE or ALPHA_PER_SAMPLE:
        n = tl.minimum(i // sample_numel, (numel - 1) // sample_numel)
        return _param(sigma_ptr, sigma, n, SIGMA_PER_SAMPLE), _param(alpha_ptr, alpha, n, ALPHA_PER_SAMPLE)
    else:
        return sigma, alpha


@triton.jit
def _coords(i, sizes):
    # Coordinates of logical index i over 4 dims (sizes *, s1, s2, s3: ``sizes`` is the last
    # three), decomposed once and turned into an offset per tensor by _dot4 (x, out and noise
    # have their own strides).
    s1, s2, s3 = sizes
    d3 = i % s3
    r = i // s3
    d2 = r % s2
    r = r // s2
    d1 = r % s1
    d0 = r // s1
    return d0, d1, d2, d3


@triton.jit
def _dot4(d, st):
    # Memory offset of coordinates d (from _coords) for a tensor's 4 strides st.
    return d[0] * st[0] + d[1] * st[1] + d[2] * st[2] + d[3] * st[3]


@triton.jit
def _plane_offset(pd0, pd1, pd2, st):
    # Memory offset of a plane with coordinates (pd0, pd1, pd2) over the plane dims, for a
    # tensor's strides st (its first three are the plane dims').
    return pd0 * st[0] + pd1 * st[1] + pd2 * st[2]


@triton.jit
def _mirror(i, n):
    # One reflection without repeating the edge (-1 -> 1, n -> n-2); valid for -n < i < 2n-1.
    # Clamped to [0, n) so that lanes past the image (masked at the store) read valid memory.
    i = tl.where(i < 0, -i, i)
    i = tl.where(i >= n, 2 * n - 2 - i, i)
    return tl.minimum(tl.maximum(i, 0), n - 1)


@triton.jit
def _blur_weights(blur_sigma_ptr, radius_ptr, blur_sigma, n, R: tl.constexpr,
                  BLUR_SIGMA_PER_SAMPLE: tl.constexpr, RADIUS_PER_SAMPLE: tl.constexpr):
    """Normalised taps ``w_0 .. w_R`` (``w_-k = w_k``): scalars, or ``[S]`` per-sample vectors.

    A sample whose own radius ``r < R`` gets zero weights beyond ``r`` (and the kernels drop those
    taps, see :func:`_tap`, so a NaN there stays out); the normalisation is over its own
    ``2r + 1`` taps (README, "The contract, in short": the blur). ``blur_sigma = 0`` leaves only
    w_0 = 1.
    """
    if BLUR_SIGMA_PER_SAMPLE:
        bs = tl.load(blur_sigma_ptr + n)
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
def _emit_row(vals, out_base, noise_base, h, c, H, W, plane_elem0, key, sg, al, out_hw, noise_hw, rmask,
              ALIGNED: tl.constexpr, HAS_NOISE: tl.constexpr, SHARE: tl.constexpr = False,
              NOISE_IN: tl.constexpr = False):
    """Finish one output row of a ``[S, BW]`` tile: noise, ``alpha * B(x) + sigma * eps``, store.

    ``vals``: the 4 blurred lanes (``[S, BW]`` each, columns ``c + 0..3``); ``h``: the ``[S]``
    rows; ``plane_elem0``: logical index of each unit's plane start (int64 ``[S]``); ``key``:
    the stream ``(k0, k1, off)`` (:func:`_stream_key`); ``out_hw``/``noise_hw``: the (H, W)
    strides of out and noise.
    ``SHARE`` (W % 4 != 0): thread ``q``'s second counter group is thread ``q + 1``'s first,
    taken from it with ``tl.gather`` instead of a second Philox; the last thread of the row only
    supplies its group (its columns belong to the next column block and are not stored).
    ``NOISE_IN``: eps is read from ``noise_base`` (the caller's, any float dtype) instead of drawn.
    """
    osh, osw = out_hw
    nsh, nsw = noise_hw
    if NOISE_IN:
        cols, mask = _row_mask(c, W, rmask, ALIGNED, SHARE)
        o = (h * nsh)[:, None, None] + (cols * nsw)[None, :, :]
        eps = _f32(tl.load(noise_base[:, None, None] + o, mask=mask, other=0.0))
    else:
        eps = _row_normals(c, h, W, plane_elem0, key, ALIGNED, SHARE)
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
def _row_normals(c, h, W, plane_elem0, key, ALIGNED: tl.constexpr, SHARE: tl.constexpr):
    """The drawn eps ``[S, BW, 4]`` of one output row's lanes (see :func:`_emit_row`)."""
    k0, k1, off = key
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
        s, a = _params_at(i, numel, sample_numel, (sigma_ptr, alpha_ptr, sigma, alpha),
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
        sizes = (s1, s2, s3)
        strides = ((xs0, xs1, xs2, xs3), (os0, os1, os2, os3), (ns0, ns1, ns2, ns3))  # x, out, noise
        bx = i0 * 0
        bases = (bx, bx, bx)
        if GROUP_ROWS:
            d = _coords(i0, sizes)
            bases = (_dot4(d, strides[0]), _dot4(d, strides[1]), _dot4(d, strides[2]))
        lanes = (z0, z1, z2, z3)
        ulanes = (u0, u1, u2, u3)
        for j in tl.static_range(4):
            _strided_lane(lanes[j], ulanes[j], j, i0, bases, (x_ptr, out_ptr, noise_ptr),
                          (sigma_ptr, alpha_ptr, sigma, alpha), numel, sample_numel, sizes, strides,
                          in_scale, in_shift, HAS_NOISE, GROUP_ROWS, SIGMA_PER_SAMPLE, ALPHA_PER_SAMPLE,
                          MAP, DEQUANT, NOISE_IN)


@triton.jit
def _strided_lane(z, u, j: tl.constexpr, i0, bases, ptrs, params, numel, sample_numel, sizes, strides,
                  in_scale, in_shift, HAS_NOISE: tl.constexpr, GROUP_ROWS: tl.constexpr,
                  SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr, MAP: tl.constexpr,
                  DEQUANT: tl.constexpr, NOISE_IN: tl.constexpr):
    """Lane ``j`` (element ``4 g + j``) of each group ``g`` of the noise kernel's strided path:
    ``z``/``u`` the lane's normal and uniform; ``ptrs``, ``strides`` (4 each) and ``bases`` (the
    group's offsets, with ``GROUP_ROWS``) for x, out and noise; ``params`` as :func:`_params_at`;
    ``sizes`` as :func:`_coords`."""
    x_ptr, out_ptr, noise_ptr = ptrs
    xs, os_, ns = strides
    i = i0 + j
    mask = i < numel
    s, a = _params_at(i, numel, sample_numel, params, SIGMA_PER_SAMPLE, ALPHA_PER_SAMPLE)
    if GROUP_ROWS:
        # Innermost size % 4 == 0: the group's 4 lanes share their outer coordinates.
        ox = bases[0] + j * xs[3]
        oo = bases[1] + j * os_[3]
        on = bases[2] + j * ns[3]
    else:
        d = _coords(i, sizes)
        ox = _dot4(d, xs)
        oo = _dot4(d, os_)
        on = _dot4(d, ns)
    if NOISE_IN:
        z = _f32(tl.load(noise_ptr + on, mask=mask, other=0.0))
    x = _map_in(_f32(tl.load(x_ptr + ox, mask=mask, other=0)), u, in_scale, in_shift, MAP, DEQUANT)
    tl.store(out_ptr + oo, _cast(a * x + s * z, out_ptr), mask=mask)
    if HAS_NOISE:
        tl.store(noise_ptr + on, _cast(z, noise_ptr), mask=mask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _mollify_blur_kernel(
    x_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr, blur_sigma_ptr, radius_ptr,
    sigma, alpha, blur_sigma, seed_lo, seed_hi, off_lo, off_hi, words_ptr,
    H, W, units, strips, col_blocks, planes_per_sample, P1, P2,
    xs0, xs1, xs2, xsh, xsw, os0, os1, os2, osh, osw, ns0, ns1, ns2, nsh, nsw,
    R: tl.constexpr, TILE_H: tl.constexpr, S: tl.constexpr, BW: tl.constexpr, ALIGNED: tl.constexpr,
    HAS_NOISE: tl.constexpr, SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr,
    BLUR_SIGMA_PER_SAMPLE: tl.constexpr, RADIUS_PER_SAMPLE: tl.constexpr, NOISE_IN: tl.constexpr,
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
    x_base = x_ptr + _plane_offset(pd0, pd1, pd2, (xs0, xs1, xs2))
    out_base = out_ptr + _plane_offset(pd0, pd1, pd2, (os0, os1, os2))
    noise_base = noise_ptr + _plane_offset(pd0, pd1, pd2, (ns0, ns1, ns2))
    plane_elem0 = plane.to(tl.int64) * H * W
    if ALIGNED:
        c = (pid_c * BW + tl.arange(0, BW)) * 4  # first column of each thread's 4
    else:
        c = (pid_c * (BW - 1) + tl.arange(0, BW)) * 4  # the last thread only lends its counter group
    w = _blur_weights(blur_sigma_ptr, radius_ptr, blur_sigma, n, R, BLUR_SIGMA_PER_SAMPLE, RADIUS_PER_SAMPLE)
    if RADIUS_PER_SAMPLE:
        reach = _reach(blur_sigma_ptr, radius_ptr, n, BLUR_SIGMA_PER_SAMPLE)[:, None]  # [S, 1]: taps k <= reach count
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
            _emit_row(vals, out_base, noise_base, h, c, H, W, plane_elem0, (k0, k1, off), sg, al, (osh, osw),
                      (nsh, nsw), umask & (h < H), ALIGNED, HAS_NOISE, True, NOISE_IN)


@triton.jit
def _reach(blur_sigma_ptr, radius_ptr, n, BLUR_SIGMA_PER_SAMPLE: tl.constexpr):
    """Per-sample radius ``[S]`` that the taps may read: the sample's own radius, 0 where its
    blur sigma is 0 (the identity reads no neighbour, whatever ``blur_radius`` says)."""
    r = tl.load(radius_ptr + n)
    if BLUR_SIGMA_PER_SAMPLE:
        r = tl.where(tl.load(blur_sigma_ptr + n) == 0.0, 0, r)
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
    src_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr, blur_sigma_ptr, radius_ptr,
    sigma, alpha, blur_sigma, seed_lo, seed_hi, off_lo, off_hi, words_ptr, radius,
    H, W, units, col_blocks, planes_per_sample, P1, P2,
    ss0, ss1, ss2, ssh, ssw, os0, os1, os2, osh, osw, ns0, ns1, ns2, nsh, nsw,
    ALONG_H: tl.constexpr, FINAL: tl.constexpr, S: tl.constexpr, BW: tl.constexpr, ALIGNED: tl.constexpr,
    HAS_NOISE: tl.constexpr, SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr,
    BLUR_SIGMA_PER_SAMPLE: tl.constexpr, RADIUS_PER_SAMPLE: tl.constexpr, NOISE_IN: tl.constexpr,
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
    src_base = src_ptr + _plane_offset(pd0, pd1, pd2, (ss0, ss1, ss2))
    out_base = out_ptr + _plane_offset(pd0, pd1, pd2, (os0, os1, os2))
    c = (pid_c * BW + tl.arange(0, BW)) * 4
    if BLUR_SIGMA_PER_SAMPLE:
        bs = tl.load(blur_sigma_ptr + n)
    else:
        bs = blur_sigma + tl.zeros((S,), tl.float32)
    if RADIUS_PER_SAMPLE:
        r = _reach(blur_sigma_ptr, radius_ptr, n, BLUR_SIGMA_PER_SAMPLE)
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
        noise_base = noise_ptr + _plane_offset(pd0, pd1, pd2, (ns0, ns1, ns2))
        sg = _param(sigma_ptr, sigma, n, SIGMA_PER_SAMPLE) + tl.zeros((S,), tl.float32)
        al = _param(alpha_ptr, alpha, n, ALPHA_PER_SAMPLE) + tl.zeros((S,), tl.float32)
        # acc[..., 2i + j]: split j (lanes 0, 2 | 1, 3), then i.
        even, odd = tl.split(tl.reshape(acc, (S, BW, 2, 2)))
        a0, a2 = tl.split(even)
        a1, a3 = tl.split(odd)
        _emit_row((a0, a1, a2, a3), out_base, noise_base, h, c, H, W, plane.to(tl.int64) * H * W, (k0, k1, off),
                  sg, al, (osh, osw), (nsh, nsw), umask, ALIGNED, HAS_NOISE, False, NOISE_IN)
    else:
        cols = c[:, None] + lanes[None, :]
        o = (h * osh)[:, None, None] + (cols * osw)[None, :, :]
        mask = umask[:, None, None] & (cols < W)[None, :, :]
        tl.store(out_base[:, None, None] + o, acc, mask=mask)

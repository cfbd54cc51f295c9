"""The ``triton`` backend's launch plan: the kernels, grids, arguments, constexprs and options
of one call (:func:`_plan`, :class:`Launch`), from shapes, strides and ``Params`` alone.

Pure Python: layouts (coalesced dims, strides per tensor, whether int64 indexing is needed) and
tiles are cached per shape and strides, and nothing touches a GPU for CPU tensors, so tools
(benchmarks/sass/report.py) plan and compile every variant without one. The sizes the kernels
are launched with (blocks, warps, tile heights, the fused radius limit and register caps) are
defined here.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Tuple, cast

import torch
import triton

from .._call import PER_SAMPLE, Call, Params
from ..generator import DeviceStream, to_unsigned64
from . import LIMITS
from ._native import merged
from ._triton_kernels import _mollify_blur_axis_kernel, _mollify_blur_kernel, _mollify_noise_kernel

# Coalesced dims the noise kernel indexes, and the blur kernels' in front of H, W; mollify runs
# a call with more on contiguous copies (backends.LIMITS, the one place they are declared).
MAX_DIMS = cast(int, LIMITS["triton"].max_dims)
MAX_PLANE_DIMS = cast(int, LIMITS["triton"].max_plane_dims)
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
    sizes, st = merged(shape, strides, False)
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
    lead, lead_st = merged(shape, strides, True)
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


@functools.lru_cache(maxsize=None)
def _takes(kernel) -> Tuple[str, ...]:
    """The per-sample parameters (``_call.PER_SAMPLE``) a kernel takes: those it has a
    ``<name>_ptr`` argument for. Its signature lists their pointers, then (after any others, such
    as ``radius_ptr``) their values ``<name>``, in ``PER_SAMPLE`` order, and a constexpr
    ``<NAME>_PER_SAMPLE`` says which pointer it reads."""
    return tuple(n for n in PER_SAMPLE if f"{n}_ptr" in kernel.arg_names)


def _per_sample(kernel, p: Params, dummy: torch.Tensor) -> Tuple[tuple, tuple, dict]:
    """``(pointers, values, flags)`` of the per-sample parameters ``kernel`` takes (:func:`_takes`):
    a tensor parameter's pointer (its value 0.0), a number's value (``dummy`` as its pointer,
    never read), and the ``<NAME>_PER_SAMPLE`` constexprs."""
    names = _takes(kernel)
    vals = [getattr(p, n) for n in names]
    ptrs = tuple(v if torch.is_tensor(v) else dummy for v in vals)
    nums = tuple(0.0 if torch.is_tensor(v) else float(v) for v in vals)
    flags = {f"{n.upper()}_PER_SAMPLE": torch.is_tensor(v) for n, v in zip(names, vals)}
    return ptrs, nums, flags


def _plan_full(call: Call) -> List[Launch]:
    """The launches for one call.

    The caller's eps (``call.given_noise``: any float dtype, any strides) takes the noise slot and
    is read instead of drawn (the kernels' ``NOISE_IN``); nothing is written to it and the stream
    is not used.

    The layout fits the kernels (at most :data:`MAX_DIMS` coalesced dims for the noise,
    :data:`MAX_PLANE_DIMS` plane dims for the blur): mollify runs any other on contiguous
    copies. (The two-pass blur's contiguous scratch merges wherever x's dims do, so it adds
    none.) Touches no GPU for CPU tensors.
    """
    x, out, p, stream = call.x, call.target, call.resolved, call.rng
    noise_in = call.given_noise is not None
    noise = call.given_noise if noise_in else call.noise
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
    blur = p.blur_sigma is not None
    two_pass = blur and p.max_radius > FUSED_MAX_RADIUS
    if two_pass:
        # The two passes also index a float32 scratch in x's logical order (contiguous): its
        # plane offsets must come from the same plane decomposition as x's and out's, so its
        # strides join the layout (a slot 3 after x, out and noise; out's strides stand in for
        # an absent noise, which adds no constraint).
        strides = strides[:2] + (strides[2] if noise is not None else strides[1], _contiguous_strides(x.shape))
    layout = _blur_layout(tuple(x.shape), strides) if blur else _noise_layout(tuple(x.shape), strides)
    assert layout is not None, "mollify runs layouts beyond the kernels' dims on contiguous copies (backends.LIMITS)"
    dummy = out  # any pointer for the per-sample slots that a constexpr flag disables
    noise_p = noise if noise is not None else dummy
    writes_noise = noise is not None and not noise_in
    opts = {"num_warps": NUM_WARPS}
    if not blur:
        sizes, (xs, os_, ns), contig, idx64, group_rows = layout
        grid = (-(-(-(-numel // 4)) // NOISE_BLOCK),)
        ptrs, nums, flags = _per_sample(_mollify_noise_kernel, p, dummy)
        args = (x, out, noise_p, *ptrs, *nums, *stream_args, numel, numel // x.shape[0],
                sizes[1], sizes[2], sizes[3], *xs, *os_, *ns, p.in_scale, p.in_shift)
        consts = dict(CONTIG=contig, HAS_NOISE=writes_noise, IDX64=idx64, GROUP_ROWS=group_rows, **flags,
                      BLOCK=NOISE_BLOCK, MAP=False, DEQUANT=False, NOISE_IN=noise_in, WORDS=words)
        if p.maps(x, out):
            # Separate roundings of the map's sum, product and shift, as the reference.
            consts.update(MAP=True, DEQUANT=p.dequant)
            opts = dict(opts, enable_fp_fusion=False)
        return [Launch(_mollify_noise_kernel, grid, args, consts, opts, numel)]
    H, W = x.shape[-2:]
    assert x.dim() >= 3, "mollify validates a blur's rank (>= 3 dims) before any backend"
    if p.max_radius >= min(H, W):
        raise ValueError(
            f"mollify: the triton blur kernels mirror once, so they need blur radius < min(H, W) = {min(H, W)}, "
            f"got radius {p.max_radius}; larger radii must be routed to another backend")
    planes, (P1, P2), (xs, os_, ns) = layout[0], layout[1], layout[2][:3]
    rad_t = torch.is_tensor(p.radius)
    rad_p = p.radius if rad_t else dummy
    R = int(p.max_radius)
    pps = planes // x.shape[0]
    # The fused and the two-pass kernels take the same per-sample parameters (checked below).
    ptrs, nums, flags = _per_sample(_mollify_blur_kernel, p, dummy)
    assert _takes(_mollify_blur_axis_kernel) == _takes(_mollify_blur_kernel)
    common = dict(ALIGNED=W % 4 == 0, HAS_NOISE=writes_noise, **flags, RADIUS_PER_SAMPLE=rad_t, NOISE_IN=noise_in,
                  WORDS=words)
    head = (*ptrs, rad_p, *nums, *stream_args)
    if R <= FUSED_MAX_RADIUS:
        bw, s, tile_h, strips, units, cb = _blur_tiles(H, W, planes, True, W % 4 != 0)
        grid = (-(-units // s) * cb,)
        args = (x, out, noise_p, *head, H, W, units, strips, cb, pps, P1, P2, *xs, *os_, *ns)
        consts = dict(R=R, TILE_H=tile_h, S=s, BW=bw, **common)
        plain = W % 16 == 0 and noise is None and not (any(flags.values()) or rad_t) and xs[4] == os_[4] == 1
        return [Launch(_mollify_blur_kernel, grid, args, consts, _fused_options(R, x.element_size(), plain),
                       numel)]
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
    return [width, height]


def _plan(x, out, noise, p: Params, stream, given_noise=None) -> List[Launch]:
    """The kernel launches that write ``out`` (and ``noise``, or read the caller's eps
    ``given_noise``) for a call given by its parts, as tools and tests plan one without mollify
    (benchmarks/sass/report.py); see :class:`Launch` and :func:`_plan_full`.

    Raises ValueError for a blur radius
    ``>= min(H, W)`` (the kernels mirror once; such calls are routed to another backend).
    """
    return _plan_full(Call(x=x, sigma=p.sigma, out=out, noise=noise, given_noise=given_noise, params=p, rng=stream))

"""The ``triton`` backend: fused Triton kernels for noise and blur + noise.

Runs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (how CI checks it without a
GPU; the variable must be set before this module is imported). float64 is not supported here
(``auto`` sends it to ``cuda`` or ``torch``). This module (and so Triton) is imported only when
the backend is first asked for (mollify_fast.backends imports backends lazily); without Triton
it reports itself unavailable with the import error.

Noise: each program owns ``BLOCK`` consecutive counter groups; ``tl.randn4x(seed, offset + g)``
gives the 4 normals of logical elements ``4g .. 4g+3``, laid out as a ``[BLOCK, 4]`` tile so
each thread's 4 normals land on 4 consecutive elements (one 4-wide load and store on a
contiguous tensor). Four normals per Philox call: ``tl.randn`` (one call per output) is
ALU-bound on current GPUs.

Blur + noise: each program owns a ``[TILE_H, TILE_W]`` tile of one plane. It walks the
``TILE_H + 2r`` source rows once (mirrored), blurs each along the width, and adds it to every
output row it reaches with the vertical weight: separable, one read of x through the cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from .._validate import Params
from ..generator import draw_default_seed, to_signed64
from ._native import coalesce

MAX_DIMS = 4
NOISE_BLOCK = 512  # groups per program: 2048 elements, 8 KB of float32 read per program
BLUR_TILE_H = 16
BLUR_TILE_W = 64


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


@triton.jit
def _reflect(i, n):
    # Mirror without repeating the edge, for any distance: period 2(n-1); n == 1 -> 0.
    period = tl.maximum(2 * (n - 1), 1)
    m = i % period
    m = tl.where(m < 0, m + period, m)
    m = tl.where(m >= n, period - m, m)
    return tl.where(n == 1, 0, m)

@triton.jit
def _lane(z0, z1, z2, z3, k):
    # The normal of lane k (0..3) from the 4 outputs of one randn4x call.
    return tl.where(k == 0, z0, tl.where(k == 1, z1, tl.where(k == 2, z2, z3)))

@triton.jit
def _param(ptr, scalar, n, mask, PER_SAMPLE: tl.constexpr):
    # A per-sample parameter gathered for sample indices n, or the scalar.
    if PER_SAMPLE:
        return tl.load(ptr + n, mask=mask, other=0.0)
    else:
        return scalar


@triton.jit
def _offsets(i, s1, s2, s3, t0, t1, t2, t3):
    # Memory offset of logical index i over 4 dims (sizes *, s1, s2, s3; strides t0..t3).
    d3 = i % s3
    r = i // s3
    d2 = r % s2
    r = r // s2
    d1 = r % s1
    d0 = r // s1
    return d0 * t0 + d1 * t1 + d2 * t2 + d3 * t3

@triton.jit
def _mollify_noise_kernel(
    x_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr,
    sigma, alpha, seed, offset, numel, sample_numel,
    s1, s2, s3,
    xs0, xs1, xs2, xs3, os0, os1, os2, os3, ns0, ns1, ns2, ns3,
    CONTIG: tl.constexpr, HAS_NOISE: tl.constexpr,
    SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # tl.to_tensor: an int argument equal to 1 may arrive as a constexpr (Triton specialises it).
    pid = tl.program_id(0).to(tl.int64)
    g = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    z0, z1, z2, z3 = tl.randn4x(seed, tl.to_tensor(offset).to(tl.int64) + g)
    k = tl.arange(0, 4)[None, :]
    i = 4 * g[:, None] + k  # [BLOCK, 4] logical indices: 4 consecutive per thread
    mask = i < numel
    eps = _lane(z0[:, None], z1[:, None], z2[:, None], z3[:, None], k)
    n = i // sample_numel  # unused (and removed by the compiler) without per-sample parameters
    s = _param(sigma_ptr, sigma, n, mask, SIGMA_PER_SAMPLE)
    a = _param(alpha_ptr, alpha, n, mask, ALPHA_PER_SAMPLE)
    if CONTIG:
        ox = i
        oo = i
        on = i
    else:
        ox = _offsets(i, s1, s2, s3, xs0, xs1, xs2, xs3)
        oo = _offsets(i, s1, s2, s3, os0, os1, os2, os3)
        on = _offsets(i, s1, s2, s3, ns0, ns1, ns2, ns3)
    x = tl.load(x_ptr + ox, mask=mask, other=0.0).to(tl.float32)
    res = a * x + s * eps
    tl.store(out_ptr + oo, res.to(out_ptr.dtype.element_ty), mask=mask)
    if HAS_NOISE:
        tl.store(noise_ptr + on, eps.to(noise_ptr.dtype.element_ty), mask=mask)

@triton.jit
def _mollify_blur_kernel(
    x_ptr, out_ptr, noise_ptr, sigma_ptr, alpha_ptr, blur_ptr, radius_ptr,
    sigma, alpha, blur_sigma, radius, seed, offset,
    H, W, P1, planes_per_sample,
    xs0, xs1, xsh, xsw, os0, os1, osh, osw, ns0, ns1, nsh, nsw,
    ROWS_ARE_SAMPLES: tl.constexpr, HAS_NOISE: tl.constexpr,
    SIGMA_PER_SAMPLE: tl.constexpr, ALPHA_PER_SAMPLE: tl.constexpr, BLUR_PER_SAMPLE: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr,
):
    # Grid: (planes, row tiles, column tiles). Planes are the dims before H and W,
    # coalesced to at most two (sizes P0, P1).
    p = tl.program_id(0).to(tl.int64)
    h0 = tl.program_id(1).to(tl.int64) * TILE_H
    w0 = tl.program_id(2).to(tl.int64) * TILE_W
    pd0 = p // P1
    pd1 = p % P1
    hh = tl.arange(0, TILE_H).to(tl.int64)
    h = h0 + hh
    w = w0 + tl.arange(0, TILE_W).to(tl.int64)
    if ROWS_ARE_SAMPLES:
        n = p * 0
    else:
        n = p // planes_per_sample
    if BLUR_PER_SAMPLE:
        bs = tl.load(blur_ptr + n).to(tl.float32)
        r = tl.load(radius_ptr + n).to(tl.int64)
    else:
        bs = tl.to_tensor(blur_sigma).to(tl.float32)
        r = tl.to_tensor(radius).to(tl.int64)
    r = tl.where(bs == 0.0, 0, r)
    # Taps exp(-k^2 / (2 s^2)); s == 0 gives r = 0 and the single tap exp(-0) = 1.
    inv = 1.0 / tl.maximum(2.0 * bs * bs, 1e-30)
    norm = bs * 0.0
    for k in range(-r, r + 1):
        kf = tl.to_tensor(k).to(tl.float32)
        norm += tl.exp(-(kf * kf) * inv)
    x_plane = x_ptr + pd0 * xs0 + pd1 * xs1
    wmask = w < W
    acc = tl.zeros((TILE_H, TILE_W), dtype=tl.float32)
    # Each of the TILE_H + 2r source rows is blurred along W once, then added to every output
    # row it reaches with its vertical weight (an outer product): separable, no smem needed.
    for t in range(0, TILE_H + 2 * r):
        src = _reflect(h0 - r + t, H)
        row_ptr = x_plane + src * xsh
        row = tl.zeros((TILE_W,), dtype=tl.float32)
        for j in range(-r, r + 1):
            jf = tl.to_tensor(j).to(tl.float32)
            v = tl.load(row_ptr + _reflect(w + j, W) * xsw, mask=wmask, other=0.0).to(tl.float32)
            row += tl.exp(-(jf * jf) * inv) * v
        d = (t - r) - hh  # source row minus output row, per output row
        df = d.to(tl.float32)
        wv = tl.where((d >= -r) & (d <= r), tl.exp(-(df * df) * inv), 0.0)
        acc += wv[:, None] * row[None, :]
    blurred = acc / (norm * norm)
    # Noise by logical index; each element takes its lane of its group's randn4x.
    idx = (p * H + h[:, None]) * W + w[None, :]
    grp = idx // 4
    z0, z1, z2, z3 = tl.randn4x(seed, tl.to_tensor(offset).to(tl.int64) + grp)
    eps = _lane(z0, z1, z2, z3, idx % 4)
    mask = (h < H)[:, None] & wmask[None, :]
    if ROWS_ARE_SAMPLES:
        ns = h[:, None] + w[None, :] * 0
    else:
        ns = n + idx * 0
    sg = _param(sigma_ptr, sigma, ns, mask, SIGMA_PER_SAMPLE)
    al = _param(alpha_ptr, alpha, ns, mask, ALPHA_PER_SAMPLE)
    res = al * blurred + sg * eps
    oo = pd0 * os0 + pd1 * os1 + h[:, None] * osh + w[None, :] * osw
    tl.store(out_ptr + oo, res.to(out_ptr.dtype.element_ty), mask=mask)
    if HAS_NOISE:
        on = pd0 * ns0 + pd1 * ns1 + h[:, None] * nsh + w[None, :] * nsw
        tl.store(noise_ptr + on, eps.to(noise_ptr.dtype.element_ty), mask=mask)




def _pad(v: List[int], n: int, fill: int) -> List[int]:
    return [fill] * (n - len(v)) + list(v)


def _noise_layout(x, out, noise):
    tensors = [x, out] + ([noise] if noise is not None else [])
    sizes, strides = coalesce(list(x.shape), [list(t.stride()) for t in tensors])
    if len(sizes) > MAX_DIMS:
        return None
    contig = len(sizes) == 1 and all(st[0] == 1 for st in strides)
    sizes = _pad(sizes, MAX_DIMS, 1)
    strides = [_pad(st, MAX_DIMS, 0) for st in strides]
    if noise is None:
        strides.append([0] * MAX_DIMS)
    return sizes, strides, contig


def _blur_layout(x, out, noise):
    tensors = [x, out] + ([noise] if noise is not None else [])
    strides = [list(t.stride()) for t in tensors]
    if x.dim() > 2:
        lead, lead_st = coalesce(list(x.shape[:-2]), [st[:-2] for st in strides])
    else:
        lead, lead_st = [1], [[0] for _ in strides]
    if len(lead) > 2:
        return None
    lead = _pad(lead, 2, 1)
    strides = [_pad(ls, 2, 0) + st[-2:] for ls, st in zip(lead_st, strides)]
    if noise is None:
        strides.append([0, 0, 0, 0])
    return lead, strides


@dataclass(frozen=True)
class Launch:
    """One kernel launch, fully specified: ``kernel[grid](*args, **constexprs, **options)``.

    The plan/launch split lets tools compile every launch variant with exactly the
    specialisation a real call gets (benchmarks/sass_report.py) without a GPU.
    """

    kernel: "triton.JITFunction"  # the @triton.jit function
    grid: tuple  # ints
    args: tuple  # positional runtime args in kernel order (tensors, ints, floats), without constexprs
    constexprs: dict  # name -> value for every tl.constexpr parameter
    options: dict  # e.g. {"num_warps": 4, "num_stages": 1}
    elements: int  # logical output elements this launch writes


def _plan_full(x, out, noise, p: Params, stream) -> Tuple[List[Launch], List[Tuple[torch.Tensor, torch.Tensor]]]:
    """The launches for one call, and the ``(dst, src)`` copies to run after them.

    A layout the kernels cannot index (more non-mergeable dims than they take) is planned on
    contiguous copies ``xc = x.contiguous()``, ``oc``/``nc = torch.empty_like(xc)`` (same logical
    order, so the same noise); the copies back into ``out``/``noise`` are returned as
    ``(dst, src)`` pairs. Touches no GPU: works on CPU tensors without one.
    """
    seed, offset = stream if stream is not None else (draw_default_seed(x.device), 0)
    seed, offset = to_signed64(seed), to_signed64(offset)
    numel = x.numel()
    layout = _noise_layout(x, out, noise) if p.blur is None else _blur_layout(x, out, noise)
    if layout is None:
        xc = x.contiguous()
        oc = torch.empty_like(xc)
        nc = torch.empty_like(xc) if noise is not None else None
        launches, _ = _plan_full(xc, oc, nc, p, (seed % 2**64, offset % 2**64))
        return launches, [(out, oc)] + ([(noise, nc)] if noise is not None else [])
    dummy = out  # any pointer for the per-sample slots that a constexpr flag disables
    sig_t, al_t = torch.is_tensor(p.sigma), torch.is_tensor(p.alpha)
    sig_p = p.sigma if sig_t else dummy
    al_p = p.alpha if al_t else dummy
    sig = 0.0 if sig_t else float(p.sigma)
    al = 0.0 if al_t else float(p.alpha)
    noise_p = noise if noise is not None else dummy
    if p.blur is None:
        sizes, (xs, os_, ns), contig = layout
        grid = (triton_cdiv(-(-numel // 4), NOISE_BLOCK),)
        args = (x, out, noise_p, sig_p, al_p, sig, al, seed, offset, numel, numel // x.shape[0],
                sizes[1], sizes[2], sizes[3], *xs, *os_, *ns)
        consts = dict(CONTIG=contig, HAS_NOISE=noise is not None, SIGMA_PER_SAMPLE=sig_t,
                      ALPHA_PER_SAMPLE=al_t, BLOCK=NOISE_BLOCK)
        return [Launch(_mollify_noise_kernel, grid, args, consts, {"num_warps": 4}, numel)], []
    (P0, P1), (xs, os_, ns) = layout
    H, W = x.shape[-2:]
    planes = P0 * P1
    bl_t = torch.is_tensor(p.blur)
    # Tiles no bigger than the image (rounded up to powers of two): a 32x32 CIFAR plane is one
    # 16x32 tile pair instead of a 16x64 tile that is half masked out.
    tile_h = min(BLUR_TILE_H, triton.next_power_of_2(H))
    tile_w = min(BLUR_TILE_W, triton.next_power_of_2(W))
    grid = (planes, triton_cdiv(H, tile_h), triton_cdiv(W, tile_w))
    args = (x, out, noise_p, sig_p, al_p, p.blur if bl_t else dummy,
            p.radius if torch.is_tensor(p.radius) else dummy,
            sig, al, 0.0 if bl_t else float(p.blur), 0 if torch.is_tensor(p.radius) else int(p.radius),
            seed, offset, H, W, P1, 1 if x.dim() == 2 else planes // x.shape[0], *xs, *os_, *ns)
    consts = dict(ROWS_ARE_SAMPLES=x.dim() == 2, HAS_NOISE=noise is not None, SIGMA_PER_SAMPLE=sig_t,
                  ALPHA_PER_SAMPLE=al_t, BLUR_PER_SAMPLE=bl_t, TILE_H=tile_h, TILE_W=tile_w)
    return [Launch(_mollify_blur_kernel, grid, args, consts, {"num_warps": 4}, numel)], []


def _plan(x, out, noise, p: Params, stream) -> List[Launch]:
    """The kernel launches that write ``out`` (and ``noise``) for one call; see :class:`Launch`.

    If the layout needs contiguous copies (see :func:`_plan_full`), the launches write those
    copies; :func:`mollify_triton` copies them back.
    """
    return _plan_full(x, out, noise, p, stream)[0]


def _launch(launches: List[Launch]) -> None:
    for L in launches:
        L.kernel[L.grid](*L.args, **L.constexprs, **L.options)


def mollify_triton(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor], p: Params, stream) -> None:
    launches, copies = _plan_full(x, out, noise, p, stream)
    _launch(launches)
    for dst, src in copies:
        dst.copy_(src)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)

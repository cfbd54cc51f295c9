"""The ``torch`` backend: the pure-PyTorch fallback, on every device.

Same semantics and distribution as the compiled backends, but the normals come from
PyTorch's own RNG (``Tensor.normal_``), so the numbers differ from the Philox stream. With a
``mollify_fast.Generator`` the draw is still reproducible: a ``torch.Generator`` is seeded
from the stream's ``(seed, offset)``.

Memory: the noise is drawn in logical (row-major) order, straight into ``out`` when it is
contiguous and not x itself, and the affine step finishes in place, so contiguous
float32/float64 calls allocate nothing beyond ``out`` (the eager composition
``alpha * x + sigma * torch.randn_like(x)`` allocates three temporaries). float16/bfloat16
work through float32 scratch a quarter of the batch at a time, so the result is rounded once
and the scratch stays below the composition's temporaries. In-place (``out=x``) or an ``out``
that is not contiguous needs one buffer for the noise. Every form of a call (out= in any
layout, out=x, return_noise) computes the same ``fl(sigma * eps)`` and the same fused
``+ alpha * x``, so they agree bit for bit with the out-of-place call.

Blur: :func:`mollify_fast._blur.blur`, separable depthwise ``conv2d`` (width pass, then height
pass) in the compute dtype over input padded by gathering mirrored indices. Radii beyond the
image fold their weights onto it (radius ``min(r, n-1)``: O(n) memory and time per pixel for
any r). Per-sample blur sigmas use one filter per plane; samples with different reach are
blurred in separate groups, so NaN/inf spread exactly as in the reference.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._blur import blur
from .._call import Call, Params
from .._validate import compute_dtype, map_compute_dtype
from ..reference import input_map
from ..generator import torch_generator


def availability() -> Tuple[bool, str]:
    return True, "pure PyTorch"


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    return True, ""


def maps_input(x: torch.Tensor, out: torch.Tensor, params: Params) -> bool:
    return True  # mollify_torch applies the input map itself


def _mapped_input(x: torch.Tensor, out: torch.Tensor, p: Params, gen) -> torch.Tensor:
    """x_f = ((x + u) * in_scale) + in_shift in the compute dtype (README, "The contract, in
    short"), u from ``torch.rand`` with the call's generator (drawn before the normals)."""
    acc = map_compute_dtype(x.dtype, out.dtype)
    u = torch.rand(x.shape, dtype=acc, device=x.device, generator=gen) if p.dequant else None
    return input_map(x, acc, p.in_scale, p.in_shift, u)


def _bcast(v, x: torch.Tensor):
    """A per-sample [N] tensor viewed as [N, 1, ...] against x; numbers pass through."""
    if torch.is_tensor(v):
        return v.view(-1, *([1] * (x.dim() - 1)))
    return v


def _axpy(t: torch.Tensor, a, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = t + a * src in one pass (out may be t or src), for a number or broadcast ``a``."""
    if torch.is_tensor(a):
        return torch.addcmul(t, src, a, out=out)
    return torch.add(t, src, alpha=a, out=out)


def _draw(shape, acc: torch.dtype, device, gen, buf: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Standard normals in logical (row-major) order: ``normal_()`` on a contiguous buffer
    (``buf`` if given), whatever the layouts of x and out, so out= in any layout, out=x and
    return_noise all see the same eps. ``normal_(0, sigma)`` is not used: below 16 elements and
    on non-contiguous tensors PyTorch's normal kernels round ``sigma * z`` differently."""
    eps = buf if buf is not None else torch.empty(shape, dtype=acc, device=device)
    return eps.normal_(generator=gen)


def mollify_torch(call: Call) -> None:
    """``out = alpha * src + fl(sigma * eps)`` for every call form: ``eps`` from :func:`_draw`,
    ``sigma * eps`` rounded, then ``torch.add(., src, alpha=a)`` (one fused multiply-add on both
    its vector and scalar paths) or ``addcmul`` for per-sample alpha, written to out in any layout.

    The caller's eps (``call.given_noise``, mollify's ``noise=``) is converted to the compute
    dtype and used as is: no generator is touched, and the numbers are the reference's."""
    x, out, noise, given, p = call.x, call.target, call.noise, call.given_noise, call.resolved
    gen = torch_generator(x.device, call.rng)  # one per device per thread: threads reproduce
    if p.maps(x, out):
        x = _mapped_input(x, out, p, gen)  # now in the compute dtype
    acc = compute_dtype(x.dtype)
    a = _bcast(p.alpha, x)
    s = _bcast(p.sigma, x)
    src = blur(x, p, acc) if p.blur_sigma is not None else x
    if given is not None:
        t = torch.mul(given.to(acc), s)  # a new tensor: noise may be out itself
        out.copy_(_axpy(t, a, src, out=t))
        return
    if x.dtype != acc:
        # Low precision: eps and the sum in float32, one rounding at the end, a quarter of the
        # batch at a time (at most ~4 MB of float32 scratch). Whole-batch float32 scratch plus
        # the float32 copy of x that PyTorch makes for the mixed-dtype add allocated 5 bf16-sized
        # buffers, more than the 4 of the eager composition; chunked, it is out plus ~1.
        n = x.shape[0]
        per_sample = max(1, x.numel() // max(n, 1))
        chunk = max(1, min(-(-n // 4), (4 << 20) // (4 * per_sample)))
        for n0 in range(0, n, chunk):
            sl = slice(n0, min(n, n0 + chunk))
            tmp = _draw(x[sl].shape, acc, x.device, gen)
            if noise is not None:
                noise[sl].copy_(tmp)
            tmp.mul_(s[sl] if torch.is_tensor(s) else s)
            out[sl].copy_(_axpy(tmp, a[sl] if torch.is_tensor(a) else a, src[sl], out=tmp))
        return
    # Draw straight into out when it is contiguous and not read afterwards (not src): no scratch.
    own = (out.is_contiguous() and out.dtype == acc
           and not (src.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()))
    eps = _draw(x.shape, acc, x.device, gen, out if own else None)
    if noise is not None:
        noise.copy_(eps)
    eps.mul_(s)
    _axpy(eps, a, src, out=out)


def noise_plan(call: Call):
    """A launcher for repeated noise-only calls with number parameters (mollify's plan cache):
    the numbers of the general path above, drawn into out itself when it is contiguous.
    None for float16/bfloat16 (float32 scratch) and returned noise (the general path keeps eps)."""
    x, out, noise = call.x, call.target, call.noise
    if x.dtype not in (torch.float32, torch.float64) or noise is not None:
        return None
    dev = x.device
    if out.is_contiguous():
        def run(x, out, noise, sigma, alpha, stream):
            out.normal_(generator=torch_generator(dev, stream)).mul_(sigma).add_(x, alpha=alpha)
    else:
        def run(x, out, noise, sigma, alpha, stream):
            eps = torch.empty(x.shape, dtype=x.dtype, device=dev).normal_(generator=torch_generator(dev, stream))
            torch.add(eps.mul_(sigma), x, alpha=alpha, out=out)

    return run

"""The ``torch`` backend: the pure-PyTorch fallback, on every device.

Same semantics and distribution as the compiled backends, but the normals come from
PyTorch's own RNG (``Tensor.normal_``), so the numbers differ from the Philox stream. With a
``mollify_fast.Generator`` the draw is still reproducible: a ``torch.Generator`` is seeded
from the stream's ``(seed, offset)``.

Memory: the noise is drawn straight into the output buffer and the affine step finishes in
place, so float32/float64 calls allocate nothing beyond ``out`` (the eager composition
``alpha * x + sigma * torch.randn_like(x)`` allocates three temporaries). float16/bfloat16
work through float32 scratch a quarter of the batch at a time, so the result is rounded once
and the scratch stays below the composition's temporaries. In-place (``out=x``) without blur
needs one buffer for the noise.

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
from .._validate import Params, compute_dtype, same_view
from ..generator import torch_generator


def availability() -> Tuple[bool, str]:
    return True, "pure PyTorch"


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    return True, ""


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


def mollify_torch(
    x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor], p: Params, stream
) -> None:
    gen = torch_generator(x.device, stream)  # one per device per thread: threads reproduce
    acc = compute_dtype(x.dtype)
    a = _bcast(p.alpha, x)
    s = _bcast(p.sigma, x)
    src = blur(x, p, acc) if p.blur is not None else x
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
            tmp = torch.empty_like(x[sl], dtype=acc).normal_(generator=gen)
            if noise is not None:
                noise[sl].copy_(tmp)
            tmp.mul_(s[sl] if torch.is_tensor(s) else s)
            out[sl].copy_(_axpy(tmp, a[sl] if torch.is_tensor(a) else a, src[sl], out=tmp))
    elif src is x and same_view(out, x):
        # In place, no blur: the noise needs its own buffer. Same operation order as the
        # out-of-place path (sigma*eps, then + alpha*x), so out=x gives identical numbers.
        eps = noise if noise is not None else torch.empty_like(x)
        eps.normal_(generator=gen)
        t = torch.mul(eps, s) if noise is not None else eps.mul_(s)
        _axpy(t, a, x, out=out)
    else:
        if noise is not None:
            noise.normal_(generator=gen)
            torch.mul(noise, s, out=out)
        elif torch.is_tensor(s):
            out.normal_(generator=gen).mul_(s)
        else:
            # normal_(0, s) writes fl(z * s), as normal_() then mul_(s) does (one pass fewer);
            # below 16 elements PyTorch's scalar normal kernel differs between the two, so the
            # general path uses the same call as noise_plan's launcher: the same numbers.
            out.normal_(0.0, s, generator=gen)
        _axpy(out, a, src, out=out)


def noise_plan(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor]):
    """A launcher for repeated noise-only calls with number parameters (mollify's plan cache):
    ``out = N(0, sigma) + alpha * x`` in two passes, the numbers of the general path above.
    None for float16/bfloat16 (float32 scratch) and returned noise (the general path keeps eps)."""
    if x.dtype not in (torch.float32, torch.float64) or noise is not None:
        return None
    dev = x.device

    def run(x, out, noise, sigma, alpha, stream):
        out.normal_(0.0, sigma, generator=torch_generator(dev, stream)).add_(x, alpha=alpha)

    return run

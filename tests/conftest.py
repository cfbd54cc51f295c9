"""Shared test helpers.

Triton kernels run on CPU tensors only under ``TRITON_INTERPRET=1``, which must be set before
any kernel is defined: it is set here, before the package is imported, unless the caller set
it (a GPU run uses ``TRITON_INTERPRET=0``). Nothing here touches CUDA at import/collection.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# The limit for a test's subprocess: long enough that only a hang reaches it, never a slow or
# loaded machine (a failure then reads "timed out after 1800 seconds", not like a test failure).
SUBPROCESS_LIMIT_S = 1800

# Machine epsilon (spacing at 1.0) per dtype: the rounding unit tolerances are built from.
EPS = {
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
    torch.float32: 2.0**-23,
    torch.float64: 2.0**-52,
}
# Backends agree with the reference to float32 rounding of the transcendental functions in
# the normals (README, "The contract, in short"): each backend's eps is within
# NOISE_RTOL * (1 + |eps|) of the reference's, and its output within float32 rounding of
# alpha * B(x) + sigma * eps computed from its own eps (see assert_backend_parity).
NOISE_RTOL = 2e-6
# The older one-part bound on the output alone, |d| <= 2e-5 * (1 + |v|): it does not scale with
# sigma, so it only fits sigma of order 1. assert_parity keeps it for the tests that compare an
# output without its eps; assert_backend_parity is the contract's bound.
CONTRACT_RTOL = 2e-5


def parity_bound(expected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Allowed |actual - expected| between two backends for output dtype ``dtype``.

    Both sides compute in float32 (float64) and differ by at most 2e-5*(1+|v|) before the
    final rounding (sigma of order 1); rounding to a low-precision dtype can then land on the
    two neighbours of a tie, one ulp apart: ``EPS[dtype] * |v|``.
    """
    e = expected.double().abs()
    bound = CONTRACT_RTOL * (1 + e)
    if dtype in (torch.float16, torch.bfloat16):
        bound = bound + EPS[dtype] * e.clamp_min(2.0**-14)
    return bound


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound, what: str = "") -> None:
    """Elementwise |actual - expected| <= bound, with a message naming the worst element."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().cpu().double()
    e = expected.detach().cpu().double()
    fin_a, fin_e = torch.isfinite(a), torch.isfinite(e)
    if not torch.equal(fin_a, fin_e):
        idx = tuple(int(i) for i in (fin_a != fin_e).nonzero()[0])
        raise AssertionError(f"{what}: NaN/inf mismatch at {idx}: got {a[idx].item()}, expected {e[idx].item()}")
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(e)
    d = torch.where(fin_a, (a - e).abs(), torch.zeros_like(a))
    excess = d - bound
    if a.numel() and excess.max() > 0:
        flat = int(excess.argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
        n_bad = int((excess > 0).sum())
        raise AssertionError(
            f"{what}: {n_bad}/{a.numel()} elements out of bound; worst at {idx}: got {a[idx].item()!r}, "
            f"expected {e[idx].item()!r}, |diff|={d[idx].item():.3g} > bound {bound[idx].item():.3g}"
        )


def assert_parity(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """One-part output bound (:func:`parity_bound`), for sigma of order 1 and no eps at hand."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert_within(actual, expected, parity_bound(expected, actual.dtype), what)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_sample64(v, x: torch.Tensor) -> torch.Tensor:
    """A parameter (number, 0-d, [N] or [N, 1, ..., 1]) as float64 broadcastable against x."""
    t = v.detach().to("cpu", torch.float64) if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64)
    return t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() >= 1 else t


def assert_noise_parity(noise: torch.Tensor, want_noise: torch.Tensor, what: str = "") -> None:
    """A backend's eps against the reference's: ``NOISE_RTOL * (1 + |eps|)``, plus one ulp of a
    low-precision dtype (both sides round a float32 eps; near a tie they land one ulp apart)."""
    e_ref = want_noise.detach().cpu().double()
    eb = NOISE_RTOL * (1 + e_ref.abs())
    if noise.dtype in (torch.float16, torch.bfloat16):
        eb = eb + EPS[noise.dtype] * e_ref.abs().clamp_min(2.0**-14)
    assert_within(noise, want_noise, eb, f"{what}: eps")


def assert_backend_parity(out, noise, want, want_noise, x, sigma, *, alpha=None, blur_sigma=None,
                          blur_radius=None, what: str = "") -> None:
    """The contract's two-part bound between a backend and the reference on one stream.

    1. eps: ``|noise - want_noise| <= NOISE_RTOL * (1 + |eps|)``, plus one ulp of x.dtype for
       low precision (both sides round a float32 eps; near a tie they land one ulp apart).
    2. out, given the backend's own eps: ``|out - (alpha * B(x) + sigma * eps)|`` (float64
       math, B from the reference in float64 with the float32 blur sigma the kernels get)
       within float32 rounding: ``4 u`` of ``|alpha B x| + |sigma eps|`` for the two products,
       the sum and the parameters' rounding to float32 (u = 2**-24), ``2 (2r + 1) + 8`` u of
       ``|alpha| B|x|`` for the blur's two passes of ``2r + 1`` float32 taps and its float32
       weights, plus rounding to x.dtype (an ulp of the result, and of ``sigma * eps`` for the
       eps returned in x.dtype but used in float32). The bound scales with sigma.
    ``want`` (the reference's output) is not compared directly: it is made from the reference's
    eps, which step 1 already bounds; the formula from the backend's own eps is the tighter check.
    """
    assert out.dtype == x.dtype and noise.dtype == x.dtype, what
    assert_noise_parity(noise, want_noise, what)
    assert_out_given_eps(out, x, noise, sigma, alpha=alpha, blur_sigma=blur_sigma, blur_radius=blur_radius,
                         what=what)


def assert_out_given_eps(out, x, eps, sigma, *, alpha=None, blur_sigma=None, blur_radius=None, what: str = "",
                         eps_rounded: bool = True) -> None:
    """``out`` against ``alpha * B(x) + sigma * eps`` in float64, within the float32 rounding
    bound of :func:`assert_backend_parity` (step 2). ``eps``: the eps the backend used, in the
    compute dtype; ``eps_rounded``: it was rounded to x.dtype after use (a returned eps), which
    adds an ulp of ``sigma * eps`` for low precision (``False`` for a given ``noise=`` eps,
    which the kernels use exactly as given)."""
    dtype = x.dtype
    acc = _acc(dtype)
    u = EPS[acc] / 2
    xs = x.detach().cpu()
    s = _per_sample64(sigma, xs)
    a = torch.sqrt(1 - s * s) if alpha is None else _per_sample64(alpha, xs)
    bx = xs.double()
    babs = bx.abs()
    taps = 0
    if blur_sigma is not None:
        b = (blur_sigma.detach().to("cpu", acc) if torch.is_tensor(blur_sigma)
             else torch.tensor(float(blur_sigma), dtype=acc))
        b = b.double().reshape(-1) if b.dim() else b.double()
        if not bool((b == 0).all()):
            rad = blur_radius
            if rad is None:
                rad = torch.ceil(3 * b).long() if b.dim() else int(torch.ceil(3 * b))
            bx = _blur64(bx, b, rad)
            babs = _blur64(babs, b, rad)
            r_max = int(torch.as_tensor(rad).max())
            taps = 2 * (2 * min(r_max, max(x.shape[-2:])) + 1) + 8
    e = eps.detach().cpu().to(acc).double()
    ax, se = a * bx, s * e
    formula = ax + se
    # Each rounding errs by u relative or, in the subnormal range, by half the smallest subnormal
    # of the compute dtype (u * tiny): alpha = 1.4e-45 rounds alpha * x to a float32 subnormal.
    bound = 4 * u * (ax.abs() + se.abs() + torch.finfo(acc).tiny) + taps * u * a.abs() * babs
    if dtype in (torch.float16, torch.bfloat16):
        bound = bound + EPS[dtype] * (formula.abs().clamp_min(2.0**-14) + (se.abs() if eps_rounded else 0))
    assert_within(out, formula.expand_as(out), bound.expand_as(out), f"{what}: out given eps")


def _blur64(x64: torch.Tensor, b: torch.Tensor, radius) -> torch.Tensor:
    """The reference blur in float64 (``b``: a 0-d or [N] float64 blur sigma)."""
    from mollify_fast import reference

    if torch.is_tensor(radius) and radius.dim() == 0:
        radius = int(radius)
    return reference.blur(x64, b, radius)


def make_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` in another memory layout."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        assert x.dim() == 4
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        # A view into a bigger buffer: every second element of the last dim, dims permuted.
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        big[..., ::2] = x
        return big[..., ::2]
    if layout == "transposed":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    raise ValueError(layout)


def make_strided(shape, dtype, perm, step) -> torch.Tensor:
    """Random values of logical shape ``shape`` whose memory order is the permutation ``perm``
    of its dims, taking every ``step``-th element of the innermost memory dim."""
    mem = [shape[p] for p in perm]
    mem[-1] *= step
    buf = torch.randn(mem).to(dtype)
    if step > 1:
        buf = buf[..., ::step]
    inv = sorted(range(len(perm)), key=lambda i: perm[i])
    x = buf.permute(*inv)
    assert list(x.shape) == list(shape)
    return x


def backend_or_skip(name: str) -> None:
    import mollify_fast

    ok, why = mollify_fast.available_backends()[name]
    if not ok:
        pytest.skip(f"backend {name} unavailable: {why}")


def cuda_or_skip() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def check_standard_normal(eps: torch.Tensor, ks_max: int = 10**6) -> None:
    """No NaN/inf; mean and variance within 5 standard errors of N(0, 1) (1/sqrt(n) and
    sqrt(2/n)); a Kolmogorov-Smirnov test on (at most ks_max of) the draws."""
    from scipy import stats

    e = eps.detach().double().reshape(-1).cpu()
    n = e.numel()
    assert torch.isfinite(e).all(), "NaN or inf in the noise"
    mean, var = e.mean().item(), e.var().item()
    assert abs(mean) < 5 / math.sqrt(n), f"mean {mean} beyond 5 standard errors"
    assert abs(var - 1) < 5 * math.sqrt(2 / n), f"variance {var} beyond 5 standard errors"
    step = max(1, n // ks_max)
    p = stats.kstest(e[::step].numpy(), "norm").pvalue
    assert p > 1e-4, f"KS test rejects N(0,1): p={p}"

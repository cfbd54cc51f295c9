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

# Machine epsilon (spacing at 1.0) per dtype: the rounding unit tolerances are built from.
EPS = {
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
    torch.float32: 2.0**-23,
    torch.float64: 2.0**-52,
}
# CONTRACT section 3: compiled backends agree with the reference to float32 rounding of the
# transcendental functions in the normals: |d| <= 2e-5 * (1 + |v|).
CONTRACT_RTOL = 2e-5


def parity_bound(expected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Allowed |actual - expected| between two backends for output dtype ``dtype``.

    Both sides compute in float32 (float64) and differ by at most the contract's 2e-5*(1+|v|)
    before the final rounding; rounding to a low-precision dtype can then land on the two
    neighbours of a tie, one ulp apart: ``EPS[dtype] * |v|``.
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
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert_within(actual, expected, parity_bound(expected, actual.dtype), what)


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

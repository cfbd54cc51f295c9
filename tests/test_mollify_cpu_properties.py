"""Property-based parity of the ``cpu`` backend with the reference, and its RNG statistics."""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mollify_fast as mf

from conftest import assert_parity, backend_or_skip, check_standard_normal, make_strided

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 9)) for _ in range(ndim)]
    dtype = draw(st.sampled_from(DTYPES))
    n = shape[0]
    blur = ndim >= 3 and draw(st.booleans())
    perm = draw(st.permutations(range(ndim)))
    step = draw(st.integers(1, 2))
    per_sample = draw(st.booleans())
    floats = st.floats(0.0, 1.0, allow_nan=False, width=32)
    if per_sample:
        sigma = torch.tensor([draw(floats) for _ in range(n)])
    else:
        sigma = draw(floats)
    explicit_alpha = draw(st.booleans())
    alpha = draw(st.floats(-3, 3, allow_nan=False, width=32)) if explicit_alpha else None
    blur_sigma = None
    if blur:
        if per_sample and ndim >= 3:
            blur_sigma = torch.tensor([draw(st.floats(0.0, 4.0, width=32)) for _ in range(n)])
        else:
            blur_sigma = draw(st.floats(0.0, 4.0, width=32))
    seed = draw(st.integers(0, 2**64 - 1))
    offset = draw(st.integers(0, 2**64 - 1))
    return shape, dtype, perm, step, sigma, alpha, blur_sigma, seed, offset


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_cpu_equals_reference_property(case):
    backend_or_skip("cpu")
    shape, dtype, perm, step, sigma, alpha, blur_sigma, seed, offset = case
    x = make_strided(shape, dtype, perm, step)
    kw = dict(alpha=alpha, blur_sigma=blur_sigma, return_noise=True)
    out, noise = mf.mollify(x, sigma, generator=mf.Generator(seed, offset), backend="cpu", **kw)
    want, want_noise = mf.mollify(x, sigma, generator=mf.Generator(seed, offset), backend="reference", **kw)
    assert_parity(noise, want_noise, "noise")
    assert_parity(out, want, "out")


def test_cpu_statistics_1e7():
    backend_or_skip("cpu")
    x = torch.zeros(10, 1000, 1000)
    _, eps = mf.mollify(x, 1.0, generator=mf.Generator(31337, 2**35), return_noise=True, backend="cpu")
    check_standard_normal(eps)  # moments on all 1e7, KS on 1e6 of them (its cost is a sort)
    e = eps.double().reshape(-1)
    n = e.numel()
    # Box-Muller with u >= 1e-7 caps |z| at sqrt(-2 ln 1e-7) = 5.68
    assert e.abs().max() <= math.sqrt(-2 * math.log(1e-7)) + 1e-5
    # neighbouring normals (same Philox group and across groups) are uncorrelated
    for lag in (1, 2, 4):
        r = torch.corrcoef(torch.stack([e[:-lag], e[lag:]]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n), f"lag-{lag} correlation {r}"

"""Differential fuzzing against the reference: shapes up to 9 dims, permuted and
sliced memory, every dtype, every parameter form ([N], [N, 1, ..., 1], 0-d tensors, numpy and
Python numbers), blur radii below and beyond the image (the kernels' unfused slow path), and
streams anywhere in 64 bits.

* ``cpu`` (and ``triton`` under the interpreter, few examples): eps within 2e-6 * (1 + |eps|)
  of the reference's and out within float32 rounding of ``alpha * B(x) + sigma * eps`` from it
  (conftest.assert_backend_parity), sigmas up to 1e3 with an explicit alpha.
* ``triton``'s two-pass blur (radius > 8) on permuted and sliced planes; per-sample blurs with a
  NaN and an inf, whose non-finite pixels must be exactly the reference's (each sample's own
  window); ``out=`` in a random layout (and ``out=x``) on every backend equals the out-of-place
  call bit for bit.
* ``torch`` draws other numbers: out equals ``alpha * B(x) + sigma * eps`` from its returned
  ``eps`` and the reference's blur, to the rounding of out and eps.

Example counts are bounded so the file runs in well under a minute; no per-example deadline (a
wall-clock limit that a loaded machine could reach).
"""
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import EPS, assert_backend_parity, assert_within, backend_or_skip, make_strided

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _param(draw, values, n, ndim):
    """One parameter in a random accepted form; returns (form for mollify, [N] float64 values)."""
    form = draw(st.sampled_from(["float", "np32", "0d", "N", "N11"] if len(set(values)) == 1 else ["N", "N11"]))
    v = torch.tensor(values, dtype=torch.float64)
    if form == "float":
        return float(values[0]), v
    if form == "np32":
        return np.float32(values[0]), v.float().double()
    if form == "0d":
        return torch.tensor(values[0]), v.float().double()
    t = torch.tensor(values, dtype=draw(st.sampled_from([torch.float32, torch.float64])))
    if form == "N11":
        t = t.reshape(n, *([1] * draw(st.integers(0, ndim - 1))))
    return t, t.double().reshape(-1)


@st.composite
def cases(draw, max_numel=400, max_dims=9, dtypes=DTYPES):
    ndim = draw(st.integers(1, max_dims))
    shape = [draw(st.integers(1, 4 if ndim <= 4 else 2)) for _ in range(ndim)]
    if ndim >= 3 and draw(st.booleans()):  # room for a real image in the last two dims
        shape[-2], shape[-1] = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    while int(np.prod(shape)) > max_numel:
        shape[int(np.argmax(shape))] -= 1
    n = shape[0]
    dtype = draw(st.sampled_from(dtypes))
    perm = draw(st.permutations(range(ndim)))
    step = draw(st.integers(1, 2))
    same = draw(st.booleans())
    explicit_alpha = draw(st.booleans())
    # With an explicit alpha, sometimes NCSN-scale sigmas (up to 1e3): the parity bound scales.
    big = explicit_alpha and draw(st.booleans())
    unit = st.floats(0.0, 1e3 if big else 1.0, width=32)
    sig_vals = [draw(unit)] * n if same else [draw(unit) for _ in range(n)]
    sigma = _param(draw, sig_vals, n, ndim)
    alpha = None
    if explicit_alpha:
        alpha = _param(draw, [draw(st.floats(-3, 3, width=32))] * n if same else
                       [draw(st.floats(-3, 3, width=32)) for _ in range(n)], n, ndim)
    blur = radius = None
    if ndim >= 3 and draw(st.booleans()):
        bs = st.floats(0.0, 3.0, width=32)
        blur = _param(draw, [draw(bs)] * n if same else [draw(bs) for _ in range(n)], n, ndim)
        if draw(st.booleans()):
            radius = draw(st.integers(0, 12))  # often beyond the image: the folded slow path
    seed = draw(st.integers(0, 2**64 - 1))
    offset = draw(st.integers(0, 2**64 - 1))
    return shape, dtype, perm, step, sigma, alpha, blur, radius, seed, offset


def _run(backend, case):
    shape, dtype, perm, step, sigma, alpha, blur, radius, seed, offset = case
    x = make_strided(shape, dtype, perm, step)
    kw = dict(alpha=None if alpha is None else alpha[0], blur_sigma=None if blur is None else blur[0],
              blur_radius=radius, return_noise=True)
    g = mf.Generator(seed, offset)
    out, noise = mf.mollify(x, sigma[0], generator=g, backend=backend, **kw)
    assert g.offset == (offset + -(-x.numel() // 4)) % 2**64
    assert out.shape == x.shape and out.dtype == dtype
    return x, out, noise, kw


def _compare_with_reference(backend, case):
    x, out, noise, kw = _run(backend, case)
    shape, dtype, perm, step, sigma, alpha, blur, radius, seed, offset = case
    want, want_noise = mf.mollify(x, sigma[0], generator=mf.Generator(seed, offset), backend="reference", **kw)
    assert_backend_parity(out, noise, want, want_noise, x, sigma[0], alpha=kw["alpha"], blur_sigma=kw["blur_sigma"],
                          blur_radius=radius, what=backend)


@settings(max_examples=80, **SLOW)
@given(cases())
def test_cpu_equals_reference_fuzz(case):
    backend_or_skip("cpu")
    _compare_with_reference("cpu", case)


@settings(max_examples=6, **SLOW)
@given(cases(max_numel=120, max_dims=5, dtypes=[torch.float32, torch.bfloat16, torch.float16]))
def test_triton_equals_reference_fuzz(case):
    backend_or_skip("triton")
    if not INTERPRET:
        pytest.skip("CPU tensors run on the triton backend only under TRITON_INTERPRET=1")
    _compare_with_reference("triton", case)


@settings(max_examples=60, **SLOW)
@given(cases())
def test_torch_is_affine_in_its_noise_fuzz(case):
    x, out, noise, kw = _run("torch", case)
    shape, dtype, perm, step, sigma, alpha, blur, radius, seed, offset = case
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    bshape = (-1,) + (1,) * (x.dim() - 1)
    s = sigma[1].to(acc).double().reshape(bshape)
    a = (torch.sqrt(1 - s * s) if alpha is None else alpha[1].to(acc).double().reshape(bshape))
    if blur is not None:
        bx = R.blur(x, blur[1].to(acc), radius).double()
    else:
        bx = x.double()
    want = a * bx + s * noise.double()
    u = EPS[dtype]
    # rounding of out and of the returned eps to x.dtype, plus float32 arithmetic (a conv's
    # summation order against the reference's tap order)
    bound = u * out.double().abs() + u * s.abs() * noise.double().abs() + 16 * EPS[acc] * (1 + want.abs())
    assert_within(out, want, bound, "torch: out vs alpha * B(x) + sigma * eps")


def _cpu_backends():
    names = ["cpu", "torch", "reference"]
    if INTERPRET:
        names.append("triton")
    return names


@st.composite
def two_pass_cases(draw):
    """Triton's two-pass blur: radius 9-10 over 11 x 11..12 planes, permuted / sliced memory."""
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 2)), 11, draw(st.integers(11, 12))]
    perm = draw(st.permutations(range(4)))
    step = draw(st.integers(1, 2))
    n = shape[0]
    blur = torch.tensor([draw(st.floats(2.75, 3.25, width=32)) for _ in range(n)]) if draw(st.booleans()) else 3.2
    sigma = torch.tensor([draw(st.floats(0.0, 1e3, width=32)) for _ in range(n)])
    return shape, perm, step, blur, sigma, draw(st.integers(0, 2**64 - 1))


@settings(max_examples=3, **SLOW)
@given(two_pass_cases())
def test_triton_two_pass_blur_layouts_fuzz(case):
    backend_or_skip("triton")
    if not INTERPRET:
        pytest.skip("CPU tensors run on the triton backend only under TRITON_INTERPRET=1")
    shape, perm, step, blur, sigma, seed = case
    x = make_strided(shape, torch.float32, perm, step)
    kw = dict(alpha=1.0, blur_sigma=blur, return_noise=True)
    out, noise = mf.mollify(x, sigma, generator=mf.Generator(seed), backend="triton", **kw)
    want, want_noise = mf.mollify(x, sigma, generator=mf.Generator(seed), backend="reference", **kw)
    assert_backend_parity(out, noise, want, want_noise, x, sigma, alpha=1.0, blur_sigma=blur, what="triton two-pass")


@settings(max_examples=8, **SLOW)
@given(st.sampled_from(_cpu_backends()), st.lists(st.floats(0.0, 2.5, width=32), min_size=2, max_size=3),
       st.integers(0, 8 * 9 - 1), st.integers(0, 8 * 9 - 1), st.booleans())
def test_per_sample_nan_windows_fuzz(backend, blurs, nan_at, inf_at, two_pass):
    """The non-finite pixels of a per-sample blur are exactly the reference's: each NaN/inf
    spreads over its own sample's (2r + 1)^2 window, never a wider sample's."""
    backend_or_skip(backend)
    if two_pass and backend == "triton":
        blurs = blurs[:1] + [3.1]  # radius 10: the two-pass kernels (the image grows below)
    H, W = (21, 21) if two_pass else (8, 9)
    x = torch.rand(len(blurs), 1, H, W)
    x.view(len(blurs), -1)[:, nan_at] = float("nan")
    x.view(len(blurs), -1)[:, inf_at] = float("inf")
    bs = torch.tensor(blurs)
    out = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, generator=mf.Generator(1), backend=backend)
    want = R.blur(x, bs)
    assert torch.equal(torch.isfinite(out), torch.isfinite(want))


@settings(max_examples=12, **SLOW)
@given(st.sampled_from(_cpu_backends()), st.permutations(range(4)), st.integers(1, 2), st.permutations(range(4)),
       st.integers(1, 2), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       st.sampled_from([None, 0.7]), st.booleans(), st.floats(0.0, 1e3, width=32))
def test_out_in_every_layout_is_the_out_of_place_result_fuzz(backend, xperm, xstep, operm, ostep, dtype, blur,
                                                              in_place, sigma):
    backend_or_skip(backend)
    shape = (2, 3, 5, 6)
    x = make_strided(shape, dtype, xperm, xstep)
    kw = dict(alpha=0.61, blur_sigma=blur, backend=backend)
    want = mf.mollify(x, sigma, generator=mf.Generator(4, 9), **kw)
    if in_place:
        out = x.clone()
        x = out
    else:
        out = make_strided(shape, dtype, operm, ostep)
    got = mf.mollify(x, sigma, generator=mf.Generator(4, 9), out=out, **kw)
    assert got is out
    same = (out == want) | (torch.isnan(out) & torch.isnan(want))
    assert bool(same.all()), f"{backend}: out= differs from the out-of-place result at {int((~same).sum())} elements"

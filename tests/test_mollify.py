"""The public op's semantics on the pure-PyTorch backends (torch, reference).

The torch backend draws different numbers, so it is checked through ``return_noise``:
``out == alpha * B(x) + sigma * eps`` to rounding, plus the statistics of ``eps``.
"""
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import EPS, assert_within, check_standard_normal, make_layout

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
PURE = ["torch", "reference"]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _expected_from_noise(x, sigma, alpha, noise, blur_sigma=None, blur_radius=None):
    """alpha * B(x) + sigma * noise in float64, from the returned noise."""
    bx = R.blur(x, blur_sigma, blur_radius).double() if blur_sigma is not None else x.double()
    shape = (-1,) + (1,) * (x.dim() - 1)
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(shape if torch.as_tensor(alpha).dim() else ())
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(shape if torch.as_tensor(sigma).dim() else ())
    return a * bx + s * noise.double(), s.abs() if s.dim() else abs(float(s))


def _check_affine(out, x, sigma, alpha, noise, **blur):
    """out was rounded once from alpha*B(x) + sigma*eps; noise is eps rounded to x.dtype.

    |out - (a B(x) + s noise)| <= u|out| (out's rounding) + |s| u |noise| (noise's rounding)
    + float32 arithmetic, with u the dtype's machine epsilon (twice the unit roundoff).
    """
    want, s_abs = _expected_from_noise(x, sigma, alpha, noise, **blur)
    u = EPS[x.dtype]
    f32 = 8 * EPS[_acc(x.dtype)] * (1 + want.abs())
    bound = u * out.double().abs() + u * s_abs * noise.double().abs() + f32
    assert_within(out, want, bound, "out vs alpha*B(x) + sigma*noise")


@pytest.mark.parametrize("backend", PURE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_affine_identity(backend, dtype, layout):
    x = make_layout(torch.randn(5, 3, 7, 9).to(dtype), layout)
    out, noise = mf.mollify(x, 0.6, generator=mf.Generator(1), return_noise=True, backend=backend)
    assert out.dtype == dtype and noise.dtype == dtype and out.shape == x.shape
    _check_affine(out, x, 0.6, math.sqrt(1 - 0.36), noise)


@pytest.mark.parametrize("backend", PURE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_sample_parameters(backend, dtype):
    n = 6
    x = torch.randn(n, 2, 5, 5).to(dtype)
    sigma = torch.linspace(0, 1, n)
    alpha = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    out, noise = mf.mollify(x, sigma, alpha=alpha, generator=mf.Generator(2), return_noise=True, backend=backend)
    _check_affine(out, x, sigma, alpha, noise)
    # sigma = 0 leaves alpha * x exactly; sigma = 1 with alpha None is pure noise.
    out_vp, noise_vp = mf.mollify(x, sigma, generator=mf.Generator(3), return_noise=True, backend=backend)
    assert torch.equal(out_vp[0], x[0])
    assert torch.equal(out_vp[-1], noise_vp[-1])


@pytest.mark.parametrize("backend", PURE)
def test_zero_dim_tensor_parameters(backend):
    x = torch.randn(4, 3)
    a = mf.mollify(x, torch.tensor(0.25), alpha=torch.tensor(2.0), generator=mf.Generator(9), backend=backend)
    b = mf.mollify(x, 0.25, alpha=2.0, generator=mf.Generator(9), backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", PURE)
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (17, 19), (5, 1)])
@pytest.mark.parametrize("blur_sigma", [0.4, 1.0, 2.5])
def test_blur_noise(backend, hw, blur_sigma):
    x = torch.rand(3, 2, *hw)
    out, noise = mf.mollify(x, 0.3, blur_sigma=blur_sigma, generator=mf.Generator(4), return_noise=True,
                            backend=backend)
    _check_affine(out, x, 0.3, math.sqrt(1 - 0.09), noise, blur_sigma=blur_sigma)


@pytest.mark.parametrize("backend", PURE)
def test_blur_per_sample_and_explicit_radius(backend):
    x = torch.rand(4, 3, 9, 6)
    bs = torch.tensor([0.0, 0.7, 1.5, 4.0])
    out, noise = mf.mollify(x, 0.2, blur_sigma=bs, generator=mf.Generator(5), return_noise=True, backend=backend)
    _check_affine(out, x, 0.2, math.sqrt(1 - 0.04), noise, blur_sigma=bs)
    out, noise = mf.mollify(x, 0.2, blur_sigma=bs, blur_radius=2, generator=mf.Generator(5), return_noise=True,
                            backend=backend)
    _check_affine(out, x, 0.2, math.sqrt(1 - 0.04), noise, blur_sigma=bs, blur_radius=2)


@pytest.mark.parametrize("hw", [(8, 8), (17, 19), (12, 7)])
@pytest.mark.parametrize("s", [0.5, 1.0, 2.0])
def test_torch_blur_equals_torchvision(hw, s):
    """README, "The blur": for r < min(H, W), torchvision's gaussian_blur (sigma=0 noise)."""
    r = math.ceil(3 * s)
    x = torch.rand(2, 3, *hw)
    want = TF.gaussian_blur(x, [2 * r + 1] * 2, [s, s])
    got = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=s, backend="torch")
    assert_within(got, want, 1e-6 * (1 + want.abs()), "torch blur vs torchvision")


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (3, 2), (4, 4)])
@pytest.mark.parametrize("s", [1.0, 3.0])
def test_torch_blur_radius_beyond_image(hw, s):
    """r >= H or W: mirrored borders repeat; equals the reference's direct convolution."""
    x = torch.rand(2, 2, *hw, dtype=torch.float64)
    want = R.blur(x, s)
    got = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=s, backend="torch")
    assert_within(got, want, 1e-12 * (1 + want.abs()), "torch blur vs reference")


@pytest.mark.parametrize("backend", PURE)
@pytest.mark.parametrize("blur", [None, 1.2])
def test_out_and_in_place_equal_out_of_place(backend, blur):
    x = torch.randn(3, 2, 6, 5)
    ref = mf.mollify(x, 0.5, blur_sigma=blur, generator=mf.Generator(6), backend=backend)
    out = torch.empty_like(x)
    r = mf.mollify(x, 0.5, blur_sigma=blur, generator=mf.Generator(6), out=out, backend=backend)
    assert r is out and torch.equal(out, ref)
    y = x.clone()
    r = mf.mollify(y, 0.5, blur_sigma=blur, generator=mf.Generator(6), out=y, backend=backend)
    assert r is y and torch.equal(y, ref)


@pytest.mark.parametrize("backend", PURE)
def test_in_place_with_noise(backend):
    x = torch.randn(4, 10)
    y = x.clone()
    out, noise = mf.mollify(y, 0.5, generator=mf.Generator(7), out=y, return_noise=True, backend=backend)
    assert out is y
    _check_affine(y, x, 0.5, math.sqrt(0.75), noise)


@pytest.mark.parametrize("backend", PURE)
@pytest.mark.parametrize("shape", [(0,), (0, 3, 4, 4), (2, 0, 5)])
def test_empty(backend, shape):
    x = torch.empty(shape)
    g = mf.Generator(1)
    out, noise = mf.mollify(x, 0.5, generator=g, return_noise=True, backend=backend)
    assert out.shape == x.shape and noise.shape == x.shape
    assert g.offset == 0
    if len(shape) >= 2:
        assert mf.mollify(x, 0.5, blur_sigma=1.0, backend=backend).shape == x.shape


def test_result_never_requires_grad():
    x = torch.randn(3, 4)
    with torch.enable_grad():
        assert not mf.mollify(x, 0.5).requires_grad


def test_same_generator_state_same_numbers_torch_backend():
    x = torch.randn(4, 8)
    a = mf.mollify(x, 0.5, generator=mf.Generator(10), backend="torch")
    b = mf.mollify(x, 0.5, generator=mf.Generator(10), backend="torch")
    c = mf.mollify(x, 0.5, generator=mf.Generator(10, offset=1), backend="torch")
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("backend", PURE)
def test_default_generator_reproducible_with_manual_seed(backend):
    x = torch.randn(4, 8)
    torch.manual_seed(0)
    a1, a2 = mf.mollify(x, 0.5, backend=backend), mf.mollify(x, 0.5, backend=backend)
    torch.manual_seed(0)
    b1, b2 = mf.mollify(x, 0.5, backend=backend), mf.mollify(x, 0.5, backend=backend)
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and not torch.equal(a1, a2)


@pytest.mark.parametrize("backend", PURE)
def test_noise_statistics_1e6(backend):
    x = torch.zeros(1000, 1000)
    _, eps = mf.mollify(x, 1.0, generator=mf.Generator(2024), return_noise=True, backend=backend)
    check_standard_normal(eps)


def _peak_cpu_bytes(fn) -> int:
    """Peak of live CPU allocations during fn, from the profiler's per-op memory records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_torch_backend_allocates_less_than_the_composition(dtype):
    """The issue's requirement: no more memory than alpha * x + sigma * torch.randn_like(x)."""
    x = torch.randn(64, 3, 32, 32).to(dtype)
    g = mf.Generator(1)
    ours = _peak_cpu_bytes(lambda: mf.mollify(x, 0.6, generator=g, backend="torch"))
    eager = _peak_cpu_bytes(lambda: 0.8 * x + 0.6 * torch.randn_like(x))
    nbytes = x.numel() * x.element_size()
    assert nbytes <= ours < eager, (ours, eager, nbytes)
    if dtype != torch.bfloat16:
        assert ours < nbytes + 4096  # only the output itself

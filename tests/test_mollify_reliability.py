"""Reliability at the op level: large and tiny blur parameters, dims beyond the kernels' limit,
in-place writes seen by autograd, NaN patterns, per-sample shapes and numpy numbers.

Each test here failed on the code before the fix (the reason is in its docstring).
"""
import math
import os

import numpy as np
import pytest
import torch

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import assert_parity, assert_within, backend_or_skip

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
RUNNABLE = ["torch", "reference", "cpu", "triton"]  # on CPU tensors here (triton: interpreted)


def _runnable(backend):
    backend_or_skip(backend)
    if backend == "triton" and not INTERPRET:
        pytest.skip("the triton backend runs CPU tensors only under TRITON_INTERPRET=1")


def _direct_mirror_blur_1d(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_k w[k] v[mirror(i + k)], k = -r..r, with an independent mirror (scipy's "mirror")
    written as a loop that walks back and forth: the definition, for any r."""
    n = v.shape[-1]
    r = (len(w) - 1) // 2
    out = np.zeros_like(v)
    for i in range(n):
        for t, k in enumerate(range(-r, r + 1)):
            j = i + k
            while j < 0 or j >= n:  # reflect at -1 -> 1 and n -> n-2, again and again
                if n == 1:
                    j = 0
                    break
                j = -j if j < 0 else 2 * (n - 1) - j
            out[..., i] += w[t] * v[..., j]
    return out


def _direct_blur(x: torch.Tensor, s: float, r: int) -> torch.Tensor:
    """Width then height, float64, weights exp(-k^2/(2 s^2)) normalised over 2r+1 taps."""
    k = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / s) ** 2)
    w /= w.sum()
    a = _direct_mirror_blur_1d(x.double().numpy(), w)
    a = np.swapaxes(_direct_mirror_blur_1d(np.swapaxes(a, -1, -2).copy(), w), -1, -2)
    return torch.from_numpy(np.ascontiguousarray(a))


# ---------------------------------------------------------------- 15.1: large radii


@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (2, 3), (5, 4), (3, 9)])
@pytest.mark.parametrize("s,r", [(2.0, None), (5.0, 17), (40.0, None), (0.7, 23)])
def test_reference_folded_blur_equals_direct_definition(hw, s, r):
    """For r >= H or W the reference folds the weights onto the mirrored image; that is exact
    math: it equals the tap-by-tap mirrored sum over all 2r+1 taps."""
    r = math.ceil(3 * s) if r is None else r
    x = torch.rand(2, 2, *hw, dtype=torch.float64)
    want = _direct_blur(x, s, r)
    got = R.blur(x, s, r)
    assert_within(got, want, 1e-12 * (1 + want.abs()), "folded reference vs direct")


@pytest.mark.parametrize("backend", RUNNABLE)
def test_radius_beyond_image_matches_reference(backend):
    """Kernels get r < min(H, W) only; larger radii run the folded slow path and equal the
    reference to float rounding (per-sample radii on both sides of min(H, W))."""
    _runnable(backend)
    x = torch.rand(3, 2, 5, 7)
    bs = torch.tensor([0.5, 3.0, 30.0])
    g = mf.Generator(11, 5)
    out, noise = mf.mollify(x, 0.3, blur_sigma=bs, generator=g, return_noise=True, backend=backend)
    assert g.offset == 5 + -(-x.numel() // 4)
    want, want_noise = mf.mollify(x, 0.3, blur_sigma=bs, generator=mf.Generator(11, 5), return_noise=True,
                                  backend="reference")
    if backend != "torch":
        assert_parity(noise, want_noise, f"{backend} noise")
        assert_parity(out, want, f"{backend} out")
    # torch draws other numbers: check the blur through sigma = 0
    b = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, blur_radius=500, backend=backend)
    want_b = R.blur(x.double(), bs.double(), 500).float()
    assert_within(b, want_b, 2e-6 * (1 + want_b.abs()), f"{backend} blur r=500")


@pytest.mark.parametrize("backend", ["torch", "reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_huge_radius_is_the_mirror_fold(backend, dtype):
    """Before: cpu ran r^2-per-band loops (minutes) or aborted the process (std::bad_alloc);
    the reference looped over 2r+1 taps. Now radius 2**20 folds its weights onto the mirrored
    image (the suite's run time shows the speed; no wall-clock limit here, which a loaded
    machine could reach)."""
    backend_or_skip(backend)
    x = torch.rand(2, 3, 6, 5).to(dtype)
    got = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=2.0, blur_radius=mf.MAX_BLUR_RADIUS, backend=backend)
    # sigma 2 with r = 2**20: every tap beyond ~40 sigma is exactly 0, so the result is the
    # r = 100 blur, which the direct definition computes.
    want = _direct_blur(x.double(), 2.0, 100).to(dtype)
    assert_parity(got, want, f"{backend} r=2**20")


def test_radius_limit_is_reported_and_nothing_advances():
    """Per-sample blur_sigma 1e9 overflowed the int32 radius (cpu zeros, torch NaN) or aborted."""
    x = torch.rand(2, 1, 4, 4)
    g = mf.Generator(3, 4)
    for bs in (1e9, torch.tensor([1.0, 1e9]), float(mf.MAX_BLUR_RADIUS)):
        with pytest.raises(ValueError, match=str(mf.MAX_BLUR_RADIUS)):
            mf.mollify(x, 0.5, blur_sigma=bs, generator=g)
    assert g.offset == 4
    # the limit itself is allowed
    mf.mollify(x, 0.5, blur_sigma=1.0, blur_radius=mf.MAX_BLUR_RADIUS, generator=g)
    assert g.offset == 4 + 8


# ---------------------------------------------------------------- 15.3: tiny blur sigma


@pytest.mark.parametrize("backend", [
    "torch", "reference", "triton", "cpu",
])
def test_tiny_blur_sigma_is_identity(backend):
    """Before: 2 s^2 underflowed to 0 in float32 and the centre tap was 0/0 = NaN."""
    _runnable(backend)
    x = torch.rand(3, 2, 6, 5)
    bs = torch.tensor([1e-30, 1.0, 1e-30])
    got = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, backend=backend)
    assert torch.isfinite(got).all()
    assert torch.equal(got[0], x[0]) and torch.equal(got[2], x[2])
    want = R.blur(x[1:2], 1.0)
    assert_within(got[1:2], want, 2e-6 * (1 + want.abs()), "sample with blur_sigma 1")
    assert torch.equal(mf.mollify(x, 0.0, alpha=1.0, blur_sigma=1e-30, backend=backend), x)


# ---------------------------------------------------------------- 15.8: dims beyond the kernels


@pytest.mark.parametrize("backend", ["cpu", "auto", "reference"])
def test_nine_non_mergeable_dims_run_with_contiguous_noise(backend):
    """Before: cpu refused 'at most 8 dims' after advancing the generator."""
    if backend != "auto":
        backend_or_skip(backend)
    base = torch.randn(2, 2, 2, 2, 2, 2, 2, 2, 3)
    x = base.permute(8, 7, 6, 5, 4, 3, 2, 1, 0)  # no two dims merge
    xc = x.contiguous()
    g1, g2 = mf.Generator(9, 1), mf.Generator(9, 1)
    out, noise = mf.mollify(x, 0.4, generator=g1, return_noise=True, backend=backend)
    want, want_noise = mf.mollify(xc, 0.4, generator=g2, return_noise=True, backend=backend)
    assert g1.offset == g2.offset == 1 + -(-x.numel() // 4)
    assert torch.equal(out, want) and torch.equal(noise, want_noise)
    # with a blur the plane dims in front of H, W do not merge either
    out = mf.mollify(x, 0.4, blur_sigma=0.7, generator=mf.Generator(4), backend=backend)
    assert torch.equal(out, mf.mollify(xc, 0.4, blur_sigma=0.7, generator=mf.Generator(4), backend=backend))
    # a non-mergeable out buffer as well
    o = torch.empty_like(base).permute(8, 7, 6, 5, 4, 3, 2, 1, 0)
    mf.mollify(x, 0.4, generator=mf.Generator(9, 1), out=o, backend=backend)
    assert torch.equal(o, want)


@pytest.mark.parametrize("backend", RUNNABLE + ["auto"])
@pytest.mark.parametrize("dequantize", [False, True])
def test_nine_non_mergeable_dims_with_an_input_map(backend, dequantize):
    """Before: a uint8 x whose 9 dims do not merge reached the cpu kernel (which applies the
    map itself) and was refused there, 'at most 8 dims', after the generator had advanced."""
    if backend != "auto":
        _runnable(backend)
    base = torch.randint(0, 256, (2, 2, 2, 2, 2, 2, 2, 2, 3), dtype=torch.uint8)
    x = base.permute(8, 7, 6, 5, 4, 3, 2, 1, 0)
    g1, g2 = mf.Generator(5), mf.Generator(5)
    out, noise = mf.mollify(x, 0.4, generator=g1, return_noise=True, dequantize=dequantize, backend=backend)
    want, want_noise = mf.mollify(x.contiguous(), 0.4, generator=g2, return_noise=True, dequantize=dequantize,
                                  backend=backend)
    assert g1.offset == g2.offset
    assert torch.equal(out, want) and torch.equal(noise, want_noise)


# ---------------------------------------------------------------- 15.4: in-place and autograd


@pytest.mark.parametrize("backend", RUNNABLE + ["auto"])
@pytest.mark.parametrize("blur", [None, 1.0])
def test_out_bumps_version_so_autograd_sees_the_write(backend, blur):
    """Before: the cpu backend wrote through a raw pointer; x._version stayed, and a backward
    that saved x silently used the mollified values."""
    if backend != "auto":
        _runnable(backend)
    w = torch.randn(4, 3, 5, 6, requires_grad=True)
    x = torch.rand(4, 3, 5, 6)
    y = (w * x).sum()  # saves x for the backward
    v0 = x._version
    mf.mollify(x, 0.5, blur_sigma=blur, out=x, backend=backend)
    assert x._version > v0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    o = torch.empty_like(x)
    v1 = o._version
    mf.mollify(x, 0.5, out=o, backend=backend)
    assert o._version > v1


# ---------------------------------------------------------------- 15.9: NaN patterns


def test_torch_blur_propagates_nan_like_the_reference():
    """Before: the torch backend's per-sample blur convolved every plane with the largest
    radius (zero taps beyond a sample's own), so 0 * NaN spread NaN further than the reference."""
    x = torch.rand(3, 1, 9, 8)
    x[:, 0, 4, 3] = float("nan")
    x[:, 0, 0, 7] = float("inf")
    bs = torch.tensor([0.0, 0.4, 1.4])  # radii 0, 2, 5
    got = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, backend="torch")
    want = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, backend="reference")
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert_within(got, want, 2e-6 * (1 + want.abs().nan_to_num(0, 0, 0)), "torch vs reference with NaN/inf")


# ---------------------------------------------------------------- 13.5: shapes and numbers


@pytest.mark.parametrize("backend", ["torch", "reference", "cpu"])
def test_broadcastable_per_sample_shapes(backend):
    """Diffusion code keeps coefficients as [N, 1, 1, 1]: refused before, now equal to [N]."""
    backend_or_skip(backend)
    x = torch.randn(4, 3, 6, 5)
    s = torch.rand(4)
    a = torch.rand(4, dtype=torch.float64)
    b = torch.tensor([0.0, 0.5, 1.0, 2.0])
    want = mf.mollify(x, s, alpha=a, blur_sigma=b, generator=mf.Generator(1), backend=backend)
    for shape in [(4, 1), (4, 1, 1), (4, 1, 1, 1)]:
        got = mf.mollify(x, s.reshape(shape), alpha=a.reshape(shape), blur_sigma=b.reshape(shape),
                         generator=mf.Generator(1), backend=backend)
        assert torch.equal(got, want), shape
    one = torch.randn(1, 3, 6, 5)  # N = 1: [1, 1, 1, 1] is per sample too
    assert torch.equal(mf.mollify(one, torch.full((1, 1, 1, 1), 0.3), generator=mf.Generator(1), backend=backend),
                       mf.mollify(one, 0.3, generator=mf.Generator(1), backend=backend))


@pytest.mark.parametrize("backend", ["torch", "reference", "cpu"])
def test_numpy_numbers(backend):
    """numpy float32/float16/float64 scalars and 0-d arrays: refused before (float64 aside)."""
    backend_or_skip(backend)
    x = torch.randn(4, 3, 6, 5)
    want = mf.mollify(x, float(np.float32(0.25)), alpha=float(np.float32(0.5)), blur_sigma=float(np.float32(0.75)),
                      generator=mf.Generator(1), backend=backend)
    for conv in (np.float32, np.float64, np.array, lambda v: np.array(v, dtype=np.float32)):
        got = mf.mollify(x, conv(np.float32(0.25)), alpha=conv(np.float32(0.5)), blur_sigma=conv(np.float32(0.75)),
                         generator=mf.Generator(1), backend=backend)
        assert torch.equal(got, want)
    h = mf.mollify(x, np.float16(0.25), generator=mf.Generator(1), backend=backend)
    assert torch.equal(h, mf.mollify(x, 0.25, generator=mf.Generator(1), backend=backend))
    per = np.linspace(0, 1, 4, dtype=np.float32)
    assert torch.equal(mf.mollify(x, per, generator=mf.Generator(1), backend=backend),
                       mf.mollify(x, torch.from_numpy(per), generator=mf.Generator(1), backend=backend))


def test_float64_input_keeps_large_parameters():
    """1e39 overflows float32 only: a float64 x still takes it."""
    x = torch.randn(2, 3, dtype=torch.float64)
    out = mf.mollify(x, 0.0, alpha=1e39, backend="reference")
    assert torch.equal(out, x * 1e39)


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unfused_path_in_place_and_low_precision(backend, dtype):
    """The slow path (radius beyond the image) writes out=x exactly like out-of-place, rounds
    once to bfloat16, and returns the noise in x's dtype."""
    _runnable(backend)
    x = torch.rand(2, 3, 4, 6).to(dtype)
    want, want_noise = mf.mollify(x, 0.4, blur_sigma=2.0, blur_radius=9, generator=mf.Generator(8),
                                  return_noise=True, backend=backend)
    assert want.dtype == dtype and want_noise.dtype == dtype
    y = x.clone()
    r, noise = mf.mollify(y, 0.4, blur_sigma=2.0, blur_radius=9, generator=mf.Generator(8), out=y,
                          return_noise=True, backend=backend)
    assert r is y and torch.equal(y, want) and torch.equal(noise, want_noise)
    if backend != "torch":
        ref, ref_noise = mf.mollify(x, 0.4, blur_sigma=2.0, blur_radius=9, generator=mf.Generator(8),
                                    return_noise=True, backend="reference")
        assert_parity(want_noise, ref_noise, "noise")
        assert_parity(want, ref, "out")

"""The CUDA kernels' code, run on the CPU, equals ``mollify_fast.reference``.

``MOLLIFY_FAST_CUDA_EMULATE=1`` makes the ``cuda`` backend run CPU tensors through the host
driver (kernels/mollify_cuda_host.cpp): the same ``__host__ __device__`` per-thread and per-block
functions as the GPU (kernels/mollify_cuda_kernels.cuh), over the same grid and block
decomposition, a block's shared-memory phases run one after the other for all its threads. So
these tests cover the kernels' indexing, tiling, halos, vector/scalar paths, tails and
parameter handling without a GPU. Device-only intrinsics (hardware float16/bfloat16 rounding,
fast sin/cos) have host definitions of the same rounding (RNE) or the reference's math, so
parity here is the contract's tolerance, as on the GPU.
"""
import subprocess
import sys

import pytest
import torch

import mollify_fast as mf
from mollify_fast import backends
from mollify_fast.backends._native import extension

from conftest import assert_parity, make_layout

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(autouse=True)
def emulate(monkeypatch):
    ext, why = extension()
    if ext is None:
        pytest.skip(f"the extension is not built: {why}")
    monkeypatch.setenv("MOLLIFY_FAST_CUDA_EMULATE", "1")
    backends.availability.cache_clear()  # availability() reads the variable; the registry caches it
    yield
    backends.availability.cache_clear()


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "misaligned":
        # Contiguous, but one element past a 16-byte boundary: the kernels' scalar path.
        buf = torch.empty(x.numel() + 1, dtype=x.dtype)
        v = buf[1:].view(x.shape)
        v.copy_(x)
        return v
    return make_layout(x, layout)


def compare(x, sigma, *, seed=1234, offset=0, out=None, **kw):
    """The emulated cuda backend against the reference on the same stream: out and noise."""
    g = mf.Generator(seed, offset)
    got, noise = mf.mollify(x, sigma, generator=g, return_noise=True, backend="cuda", out=out, **kw)
    assert mf.last_backend() == "cuda"
    assert g.offset == (offset + -(-x.numel() // 4)) % 2**64
    want, want_noise = mf.mollify(x, sigma, generator=mf.Generator(seed, offset), return_noise=True,
                                  backend="reference", **kw)
    assert_parity(noise, want_noise, "emulated cuda noise")
    assert_parity(got, want, "emulated cuda out")
    return got


def _params(form: str, n: int):
    """sigma and extra keyword arguments for a parameter form."""
    if form == "scalar":
        return 0.6, {}
    if form == "0d":
        return torch.tensor(0.6), {"alpha": torch.tensor(0.9)}
    if form == "per_sample":
        sigma = torch.linspace(0.0, 1.5, n)
        alpha = torch.linspace(1.0, -0.5, n, dtype=torch.float64)
        return sigma, {"alpha": alpha}
    raise ValueError(form)


# (3, 2, 5, 7): 210 elements, samples of 70, so 4-element groups straddle samples and the
# last group is partial. (2, 3, 19, 29): more than one 256-thread block of groups, odd sample.
NOISE_SHAPES = [(3, 2, 5, 7), (2, 3, 19, 29)]
LAYOUTS = ["contiguous", "channels_last", "strided", "transposed", "misaligned"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", ["scalar", "0d", "per_sample"])
@pytest.mark.parametrize("shape", NOISE_SHAPES)
def test_noise(dtype, layout, form, shape):
    x = _layout(torch.randn(shape).to(dtype), layout)
    sigma, kw = _params(form, shape[0])
    compare(x, sigma, **kw)


# Tails: numel 1, 7 (not a multiple of 4), 4097 (block of 1024 elements + 1), 2062 (rows of
# 1031 straddle groups), 5120 (exact blocks).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (4097,), (2, 1031), (5, 4, 16, 16)])
def test_noise_tails(dtype, shape):
    compare(torch.randn(shape).to(dtype), 0.8)
    compare(torch.randn(shape).to(dtype), torch.rand(shape[0]), alpha=torch.rand(shape[0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noise_misaligned_out_and_in_place(dtype):
    x = torch.randn(3, 5, 11).to(dtype)
    out = _layout(torch.zeros_like(x), "misaligned")
    compare(x, 0.3, out=out)
    want = mf.mollify(x.clone(), 0.3, generator=mf.Generator(5), backend="reference")
    y = x.clone()
    got = mf.mollify(y, 0.3, generator=mf.Generator(5), backend="cuda", out=y)
    assert got.data_ptr() == y.data_ptr()
    assert_parity(y, want, "in place")


@pytest.mark.parametrize("seed,offset", [(2**64 - 1, 2**32 - 3), (0x9E3779B97F4A7C15, 2**64 - 5)])
@pytest.mark.parametrize("blur", [None, 1.0])
def test_counters_beyond_32_bits(seed, offset, blur):
    kw = {} if blur is None else {"blur_sigma": blur}
    compare(torch.randn(2, 3, 9, 13), 0.9, seed=seed, offset=offset, **kw)


def _blur_params(form: str, n: int):
    """(sigma, keyword arguments) for a blur parameter form; radii stay below min(H, W) = 10."""
    if form == "default_radius":  # r = 3: a templated-radius kernel
        return 0.4, {"blur_sigma": 1.0}
    if form == "explicit_radius":  # r = 9: the runtime-radius kernel
        return 0.4, {"blur_sigma": 2.5, "blur_radius": 9}
    if form == "0d":
        return torch.tensor(0.3), {"blur_sigma": torch.tensor(0.7), "alpha": torch.tensor(1.2)}
    if form == "per_sample_default_radius":  # radii 0, 2, 3, 5, ...: per-block radius
        return torch.linspace(0.1, 0.9, n), {"blur_sigma": torch.linspace(0.0, 1.6, n)}
    if form == "per_sample_explicit_radius":  # a sample with blur sigma 0 is the identity
        bs = torch.linspace(0.0, 2.0, n)
        return torch.linspace(0.9, 0.1, n), {"blur_sigma": bs, "blur_radius": 4,
                                             "alpha": torch.linspace(1.0, 0.5, n)}
    raise ValueError(form)


# (2, 3, 37, 45): 2 x 2 tiles of 32 x 32 with partial tiles; W = 45 is odd, so 4-element
# groups straddle rows and tiles. (3, 2, 12, 10): planes smaller than a tile.
BLUR_SHAPES = [(2, 3, 37, 45), (3, 2, 12, 10)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "misaligned"])
@pytest.mark.parametrize("form", ["default_radius", "explicit_radius", "0d", "per_sample_default_radius",
                                  "per_sample_explicit_radius"])
@pytest.mark.parametrize("shape", BLUR_SHAPES)
def test_blur(dtype, layout, form, shape):
    x = _layout(torch.rand(shape).to(dtype), layout)
    sigma, kw = _blur_params(form, shape[0])
    compare(x, sigma, **kw)


@pytest.mark.parametrize("radius", list(range(0, 11)))
def test_blur_each_radius(radius):
    """Every templated radius (0..8) and the runtime-radius kernel beyond, W a multiple of 4."""
    compare(torch.rand(2, 2, 23, 36), 0.5, blur_sigma=1.5, blur_radius=radius)


@pytest.mark.parametrize("dtype,radius,hw", [(torch.float32, 56, (60, 61)), (torch.float64, 36, (40, 41))])
def test_blur_radius_beyond_shared_memory(dtype, radius, hw):
    """A tile plus halo that does not fit the shared-memory budget takes the direct kernel."""
    compare(torch.rand(1, 1, *hw).to(dtype), 0.2, blur_sigma=radius / 3, blur_radius=radius)


def test_launcher_refuses_radius_not_below_min_hw():
    """The tiled kernel mirrors once: its launcher refuses r >= min(H, W) rather than read
    outside the plane (mollify() routes such radii elsewhere before the launcher)."""
    from mollify_fast._call import Call, Params
    from mollify_fast.backends.mollify_cuda import mollify_cuda

    x = torch.rand(2, 1, 6, 9)
    out = torch.full_like(x, 7.0)
    p = Params(sigma=0.1, alpha=0.9, blur_sigma=1.0, radius=6, max_radius=6)
    with pytest.raises(ValueError, match=r"blur radius 6 must be < min\(H, W\) = 6"):
        mollify_cuda(Call(x=x, sigma=0.1, alpha=0.9, blur_sigma=1.0, blur_radius=6, out=out, params=p, rng=(1, 0)))
    assert bool((out == 7.0).all()), "nothing is written when the launch is refused"


def test_blur_radius_beyond_the_image_through_mollify():
    compare(torch.rand(2, 2, 6, 9), 0.3, blur_sigma=3.0)


def test_availability_reports_emulation():
    ok, why = backends.availability("cuda")
    assert ok, why
    assert "emulated on the host" in why
    out = subprocess.run([sys.executable, "-m", "mollify_fast", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert "emulated on the host" in out, out


def test_auto_never_picks_emulation_for_cpu_tensors():
    mf.mollify(torch.randn(4, 8), 0.5)
    assert mf.last_backend() != "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 70, 100), (1, 1, 33, 129)])
def test_blur_several_tiles_per_block(dtype, shape):
    """The host driver caps the grid at 5 blocks (the GPU at a few waves of resident blocks), so
    each block runs tiles b, b + 5, ...: 72 tiles (3 x 4 per plane, 6 planes) and 10 tiles
    (2 x 5, one plane) split unevenly, tiles of one block in different planes, rows and columns,
    partial last tile row and column."""
    x = torch.rand(shape).to(dtype)
    compare(x, 0.3, blur_sigma=1.0)
    compare(x, torch.linspace(0.2, 0.8, shape[0]), blur_sigma=torch.linspace(0.5, 2.0, shape[0]))


def test_blur_zero_sigma_sample_in_templated_kernel_keeps_inf():
    """A sample with blur sigma 0 inside a templated-radius launch (explicit scalar radius) gets
    delta weights and the centre value selected: the identity even next to inf / nan (a 0 * inf
    tap would make nan)."""
    x = torch.rand(2, 2, 20, 24)
    x[0, :, 5, 7] = float("inf")
    x[0, :, 9, 3] = float("nan")
    sigma = torch.tensor([0.0, 0.0])
    g = mf.Generator(3)
    got = mf.mollify(x, sigma, alpha=1.0, blur_sigma=torch.tensor([0.0, 1.0]), blur_radius=3, generator=g,
                     backend="cuda")
    want = mf.mollify(x, sigma, alpha=1.0, blur_sigma=torch.tensor([0.0, 1.0]), blur_radius=3,
                      generator=mf.Generator(3), backend="reference")
    torch.testing.assert_close(got[0], x[0], rtol=0, atol=0, equal_nan=True,
                               msg="blur sigma 0 is the identity, inf and nan included")
    assert_parity(got[1], want[1], "blurred sample")


@pytest.mark.parametrize("blur_radius", [None, 3, 12])
def test_tiny_blur_sigma_is_identity(blur_radius):
    """blur_sigma 1e-30 beside a normal one: 2 s^2 underflowed to 0 in float32 and the centre tap
    was 0/0 = NaN in the tiled (templated and runtime radius) and direct kernels. Radius 12 on a
    40x44 plane takes the runtime-radius tiled kernel; None and 3 the templated one."""
    x = torch.rand(3, 2, 40, 44)
    bs = torch.tensor([1e-30, 1.0, 1e-30])
    got = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, blur_radius=blur_radius, backend="cuda")
    assert torch.isfinite(got).all()
    assert torch.equal(got[0], x[0]) and torch.equal(got[2], x[2])
    want = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, blur_radius=blur_radius, backend="reference")
    assert_parity(got[1], want[1], "sample with blur_sigma 1")


# 100 x 130 planes: 4 x 5 tiles of 32 x 32, the last tile row 4 rows high and the last tile column
# 2 columns wide. At r = 3 and 8 the 2 x 3 inner tiles read no mirrored row or column, the others
# mirror at one or two borders; the partial tiles load their missing rows and columns as clamped
# pixels (never stored). Layouts: channels_last and strided take the scalar stores, misaligned the
# scalar stores of a contiguous view.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "misaligned"])
@pytest.mark.parametrize("radius", [3, 8])
def test_blur_interior_and_border_tiles(dtype, layout, radius):
    x = _layout(torch.rand(2, 3, 100, 130).to(dtype), layout)
    compare(x, 0.4, blur_sigma=radius / 3, blur_radius=radius)


@pytest.mark.parametrize("radius", [3, 8])
def test_blur_per_sample_radius_across_interior_tiles(radius):
    """Per-sample blur sigma (radii 0, radius / 2, radius): the runtime-radius kernel on planes with
    inner tiles; an explicit scalar radius with per-sample sigma (one sample 0): the templated one."""
    x = torch.rand(3, 2, 100, 130)
    bs = torch.tensor([0.0, radius / 6, radius / 3])
    compare(x, torch.tensor([0.1, 0.5, 0.9]), blur_sigma=bs)
    compare(x, 0.3, blur_sigma=bs, blur_radius=radius)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,radius", [((2, 2, 5, 37), 3), ((2, 1, 41, 9), 8), ((1, 3, 9, 9), 8),
                                          ((2, 1, 2, 70), 1)])
def test_blur_planes_much_smaller_than_the_tile_halo(dtype, shape, radius):
    """Tile rows or columns past 2n - 1 (H = 5 at r = 3: rows up to 37): the clamped mirror keeps
    every load inside the plane; r = n - 1 is the largest radius the tiled kernel takes."""
    compare(torch.rand(shape).to(dtype), 0.5, blur_sigma=radius / 3, blur_radius=radius)

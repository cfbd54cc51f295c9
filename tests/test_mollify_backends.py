"""Every compiled backend equals ``mollify_fast.reference`` to float32 rounding: its eps within
2e-6 * (1 + |eps|) of the reference's, its output within float32 rounding of
``alpha * B(x) + sigma * eps`` from that eps (README, "The contract, in short").

Backends and devices:
* ``cpu``: CPU tensors (the C++ extension).
* ``triton``: CPU tensors under ``TRITON_INTERPRET=1`` (CI), CUDA tensors otherwise.
* ``cuda``: CUDA tensors.
A backend that cannot run here is skipped with the reason (never counted as passing).
"""
import math
import os

import pytest
import torch

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import assert_backend_parity, assert_noise_parity, assert_parity, backend_or_skip, make_layout

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _device_for(backend: str) -> str:
    if backend == "cpu" or (backend == "triton" and INTERPRET):
        return "cpu"
    return "cuda"


def _setup(backend, dtype=torch.float32):
    backend_or_skip(backend)
    dev = _device_for(backend)
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend does not run float64 (auto sends it to cuda or torch)")
    return dev


# Interpreted Triton runs every program in Python: keep its shapes small.
def _small(backend):
    return backend == "triton" and INTERPRET


BACKENDS = ["cpu", "triton", "cuda"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def compare(backend, x, sigma, *, seed=1234, offset=0, **kw):
    """Run backend and reference on the same stream; compare out and noise."""
    dev = _device_for(backend)
    xd = x.to(dev)
    mv = lambda v: v.to(dev) if torch.is_tensor(v) else v  # noqa: E731
    kw_dev = {k: mv(v) for k, v in kw.items()}
    g = mf.Generator(seed, offset)
    out, noise = mf.mollify(xd, mv(sigma), generator=g, return_noise=True, backend=backend, **kw_dev)
    assert mf.last_backend() == backend
    assert g.offset == (offset + -(-x.numel() // 4)) % 2**64
    want, want_noise = mf.mollify(x, sigma, generator=mf.Generator(seed, offset), return_noise=True,
                                  backend="reference", **kw)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == xd.device
    assert out.stride() == torch.empty_like(xd).stride()
    assert_backend_parity(out.cpu(), noise.cpu(), want, want_noise, x, sigma, what=backend, **kw)
    return out


SHAPES = [(1,), (7,), (4097,), (3, 5), (2, 3, 7, 9), (5, 3, 17, 19), (1, 1, 1, 1), (6, 2, 3, 1, 4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_noise_matches_reference(backend, dtype, shape):
    _setup(backend, dtype)
    x = torch.randn(shape).to(dtype)
    compare(backend, x, 0.7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "strided", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layouts(backend, layout, dtype):
    _setup(backend, dtype)
    x = make_layout(torch.randn(3, 4, 6, 5).to(dtype), layout)
    compare(backend, x, 0.4)
    compare(backend, x, 0.4, blur_sigma=1.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ncsn_scale_sigma(backend, dtype):
    """NCSN's perturbation: alpha = 1 and sigma up to 1e3 (per sample and as one number), with
    and without the blur. The output's error scales with sigma * |eps|: the old bound
    2e-5 * (1 + |value|) did not, and float32 rounding of the normals times 348 left it."""
    _setup(backend, dtype)
    x = torch.rand(4, 2, 16, 32).to(dtype)  # 4096 draws: a few eps near 0, where the old bound failed
    sigmas = torch.tensor([0.01, 50.0, 348.0, 1000.0])
    compare(backend, x, sigmas, alpha=1.0)
    compare(backend, x, 348.0, alpha=1.0)
    compare(backend, x[..., :8, :12], sigmas, alpha=torch.tensor([1.0, 1.0, 0.5, 2.0]), blur_sigma=0.9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,offset", [(0, 0), (2**64 - 1, 2**32 - 3), (0x9E3779B97F4A7C15, 2**64 - 5), (77, 2**40)])
def test_seeds_and_offsets_beyond_32_bits(backend, seed, offset):
    _setup(backend)
    compare(backend, torch.randn(3, 37), 1.0, alpha=0.0, seed=seed, offset=offset)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_per_sample_parameters(backend, dtype):
    _setup(backend, dtype)
    n = 5
    x = torch.randn(n, 3, 4, 6).to(dtype)
    sigma = torch.tensor([0.0, 0.3, 1.0, 2.5, 0.1])
    alpha = torch.tensor([1.0, -0.5, 0.0, 3.0, 0.9], dtype=torch.float64)
    compare(backend, x, sigma, alpha=alpha)
    compare(backend, x, torch.tensor([0.0, 0.5, 1.0, 0.2, 0.9]))  # variance preserving, per sample
    compare(backend, x, sigma, alpha=alpha, blur_sigma=torch.tensor([0.0, 0.6, 1.5, 3.0, 1 / 3]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (17, 19), (16, 16), (5, 33), (9, 1)])
@pytest.mark.parametrize("blur_sigma", [0.5, 1.0, 2.0, 4.5])
def test_blur_matches_reference(backend, hw, blur_sigma):
    """Radius below and beyond the image size (mirrored borders repeat)."""
    _setup(backend)
    if _small(backend) and hw[0] * hw[1] > 100 and blur_sigma > 1:
        pytest.skip("interpreted Triton runs each tap in Python: large radii are covered on the small images")
    x = torch.rand(2, 1 if _small(backend) else 3, *hw)
    compare(backend, x, 0.25, blur_sigma=blur_sigma)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blur_explicit_radius_and_2d(backend):
    _setup(backend)
    compare(backend, torch.rand(3, 2, 8, 7), 0.3, blur_sigma=1.5, blur_radius=1)
    compare(backend, torch.rand(3, 2, 8, 7), 0.3, blur_sigma=0.5, blur_radius=9)
    # Per-sample sigma over single-channel planes (a 2-D input is refused for the blur: dim 0 is
    # always the batch, so a lone image is passed as x[None]).
    compare(backend, torch.rand(6, 1, 11, 5), torch.linspace(0, 1, 6), blur_sigma=1.2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_blur_dtypes(backend, dtype):
    _setup(backend, dtype)
    compare(backend, torch.rand(2, 3, 10, 12).to(dtype), 0.2, blur_sigma=1.3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("blur", [None, 1.5])
def test_in_place_equals_out_of_place(backend, blur):
    dev = _setup(backend)
    x = torch.randn(3, 2, 9, 8, device=dev)
    want = mf.mollify(x, 0.5, blur_sigma=blur, generator=mf.Generator(5), backend=backend)
    y = x.clone()
    r = mf.mollify(y, 0.5, blur_sigma=blur, generator=mf.Generator(5), out=y, backend=backend)
    assert r is y and torch.equal(y, want)
    out = torch.empty_like(x).contiguous(memory_format=torch.channels_last)
    mf.mollify(x, 0.5, blur_sigma=blur, generator=mf.Generator(5), out=out, backend=backend)
    assert torch.equal(out, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_requires_grad(backend):
    dev = _setup(backend)
    g = mf.Generator(3)
    out = mf.mollify(torch.empty(0, 3, 4, 4, device=dev), 0.5, blur_sigma=1.0, generator=g, backend=backend)
    assert out.shape == (0, 3, 4, 4) and g.offset == 0
    with pytest.raises(RuntimeError, match="detach"):
        mf.mollify(torch.randn(2, 3, device=dev, requires_grad=True), 0.5, backend=backend)


def test_cpu_results_independent_of_thread_count():
    backend_or_skip("cpu")
    x = torch.randn(8, 3, 64, 64)  # big enough for the OpenMP path
    old = torch.get_num_threads()
    try:
        res = []
        for n in (1, 2):
            torch.set_num_threads(n)
            res.append(mf.mollify(x, 0.5, blur_sigma=1.5, generator=mf.Generator(9), backend="cpu"))
            res.append(mf.mollify(x, 0.5, generator=mf.Generator(9), backend="cpu"))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(res[0], res[2]) and torch.equal(res[1], res[3])


def test_cpu_large_batch_matches_reference_prefix():
    """A batch past the OpenMP threshold: the first and last samples against the reference."""
    backend_or_skip("cpu")
    x = torch.randn(64, 3, 32, 32)
    out, noise = mf.mollify(x, 0.5, generator=mf.Generator(4, 2**33), return_noise=True, backend="cpu")
    want = R.normals(4, 2**33, x.numel()).reshape(x.shape)
    assert_noise_parity(noise[:2], want[:2], "first samples")
    assert_noise_parity(noise[-2:], want[-2:], "last samples")
    assert_parity(out, (math.sqrt(0.75) * x + 0.5 * noise).float(), "affine")


def test_auto_prefers_compiled_cpu_when_built():
    backend_or_skip("cpu")
    mf.mollify(torch.randn(2, 3), 0.5)
    assert mf.last_backend() == "cpu"


@pytest.mark.parametrize("backend", BACKENDS)
def test_high_rank_non_mergeable_layout(backend):
    """6-D with permuted memory order: no dims merge (triton then runs a contiguous copy)."""
    _setup(backend)
    x = torch.randn(2, 3, 2, 2, 3, 4).permute(0, 2, 1, 4, 3, 5)
    assert not x.is_contiguous()
    compare(backend, x, 0.6)
    compare(backend, x, 0.6, blur_sigma=0.8)


def test_every_backend_declares_its_limits():
    # the front reads what a backend takes from this table (README, "Backends and the build"), never its name
    from mollify_fast import backends
    from mollify_fast.backends import _native

    assert set(backends.LIMITS) == set(backends.BACKENDS)
    assert _native.MAX_DIMS == backends.LIMITS["cpu"].max_dims == backends.LIMITS["cuda"].max_dims


def test_native_parameter_list_follows_per_sample():
    """The C++ kernels index the number-or-per-sample parameters by ``ParamIndex``
    (csrc/mollify_args.h), the Python side packs them in ``PER_SAMPLE`` order: the two lists
    agree, and a list of another length is refused before any kernel runs."""
    import re

    from mollify_fast import backends
    from dataclasses import replace

    from mollify_fast._call import PER_SAMPLE, Call, Params
    from mollify_fast.backends import _native

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "csrc", "mollify_args.h")) as f:
        enum = re.search(r"enum ParamIndex[^{]*\{([^}]*)\}", f.read()).group(1)
    names = [e.split("=")[0].strip() for e in enum.split(",")]
    assert names == ["k" + "".join(w.capitalize() for w in p.split("_")) for p in PER_SAMPLE] + ["kNumParams"]
    ext, why = _native.extension()
    if ext is None:
        pytest.skip(f"the compiled extension is unavailable: {why}")
    x = torch.rand(2, 3)
    out = torch.empty_like(x)
    call = Call(x=x, sigma=0.5, alpha=0.8, out=out, params=Params(0.5, 0.8, None, 0, 0), rng=(1, 0))
    args = list(_native.kernel_args(call))
    pairs = args.index([(0.5, 0), (0.8, 0), (0.0, 0)])  # the (value, pointer) pairs, in PER_SAMPLE order
    ext.mollify_cpu(ext.Args(*args), 1)
    want = torch.empty_like(x)
    backends.launcher("reference")(replace(call, out=want))
    # eps within 2e-6 (1 + |eps|) of the reference's (|eps| < 6 here), times sigma 0.5
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one \\(value, pointer\\) pair per ParamIndex"):
        ext.Args(*args[:pairs], args[pairs][:2], *args[pairs + 1:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_in_the_subnormal_range(backend):
    """alpha * x below float32's smallest normal (alpha = its smallest subnormal): each backend
    rounds to a subnormal or 0, which the parity bound allows (half a subnormal per rounding)."""
    _setup(backend)
    compare(backend, torch.randn(4, 3, 37), 0.0, alpha=torch.finfo(torch.float32).tiny * 2.0**-23)
    compare(backend, torch.randn(4, 3, 37), 1e-30, alpha=3e-39)

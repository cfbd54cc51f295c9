"""Wrong values found by an adversarial battery in the kernels' launch paths and numerics.

* The Triton two-pass blur (radius > 8) on planes that do not merge into one run (channels_last
  with C >= 2, every other sample, transposed planes, per-sample parameters): its float32
  scratch must be indexed with the same plane decomposition as x and out.
* A NaN or inf in a per-sample blur reaches only its own sample's window, and a blur sigma
  gives the same radius whatever form it is passed in.
* ``out=`` (any layout, ``out=x``, tiny tensors, ``return_noise``) gives exactly the
  out-of-place result on every backend.
* NCSN-scale sigmas (up to 1e3) within the two-part parity bound (eps, then the output given eps).
* ``sigma = 0`` gives exactly x in every dtype (subnormals, +-max, +-inf, NaN), in particular the
  final float32 -> bfloat16/float16 rounding under the Triton interpreter.

Triton runs on CPU tensors under ``TRITON_INTERPRET=1`` (conftest.py): shapes stay small.
"""
import os

import pytest
import torch

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import assert_backend_parity, backend_or_skip

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
EMULATE = "MOLLIFY_FAST_CUDA_EMULATE"


def _device(backend):
    if backend in ("cpu", "torch", "reference") or (backend == "triton" and INTERPRET):
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return "cuda"


def _mv(v, dev):
    return v.to(dev) if torch.is_tensor(v) else v


def _vs_reference(backend, x, sigma, what, **kw):
    """Run ``backend`` and the reference on one stream; two-part parity of eps and out."""
    backend_or_skip(backend)
    dev = _device(backend)
    g = mf.Generator(21, 5)
    out, noise = mf.mollify(x.to(dev), _mv(sigma, dev), generator=g, return_noise=True, backend=backend,
                            **{k: _mv(v, dev) for k, v in kw.items()})
    assert mf.last_backend() == backend
    want, want_noise = mf.mollify(x, sigma, generator=mf.Generator(21, 5), return_noise=True,
                                  backend="reference", **kw)
    assert_backend_parity(out.cpu(), noise.cpu(), want, want_noise, x, sigma, what=what, **kw)


# ------------------------------------------------------------------------------------------
# 1. Triton two-pass blur on planes that do not merge
# ------------------------------------------------------------------------------------------


def _two_pass_inputs():
    base = torch.randn(4, 2, 11, 12)
    return {
        "channels_last": base[:2].contiguous(memory_format=torch.channels_last),
        "every-other-sample": base[::2],
        "transposed": base[:2].transpose(-1, -2).contiguous().transpose(-1, -2),
    }


@pytest.mark.parametrize("layout", list(_two_pass_inputs()))
@pytest.mark.parametrize("per_sample", [False, True], ids=["scalar", "per-sample"])
def test_triton_two_pass_blur_on_unmerged_planes(layout, per_sample):
    """Each sample gets its own blur (it got the last sample's: the scratch was indexed with
    strides that ignored the sample index)."""
    from mollify_fast.backends import mollify_triton as M

    torch.manual_seed(0)
    x = _two_pass_inputs()[layout]
    assert M.FUSED_MAX_RADIUS < 10 < min(x.shape[-2:])
    sigma = torch.tensor([0.3, 0.7]) if per_sample else 0.3
    blur = torch.tensor([3.2, 2.9]) if per_sample else 3.2  # radii 10 and 9: the two-pass path
    _vs_reference("triton", x, sigma, f"two-pass {layout}", alpha=0.9, blur_sigma=blur)


def test_triton_two_pass_blur_out_in_another_layout():
    """x contiguous, out and the returned noise channels_last: three different plane layouts."""
    backend_or_skip("triton")
    dev = _device("triton")
    x = torch.randn(2, 2, 11, 12)
    out = torch.empty_like(x).contiguous(memory_format=torch.channels_last).to(dev)
    got = mf.mollify(x.to(dev), 0.4, blur_sigma=3.5, generator=mf.Generator(2), out=out, backend="triton")
    want = mf.mollify(x.to(dev), 0.4, blur_sigma=3.5, generator=mf.Generator(2), backend="triton")
    assert got is out and torch.equal(out, want)
    ref = mf.mollify(x, 0.4, blur_sigma=3.5, generator=mf.Generator(2), backend="reference")
    assert (want.cpu() - ref).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------
# 2. Per-sample blur: a NaN reaches only its own sample's window; one radius per value
# ------------------------------------------------------------------------------------------

ALL_BACKENDS = ["cpu", "triton", "torch", "reference", "cuda-emulated"]


@pytest.fixture
def run_backend(monkeypatch):
    """``backend`` name -> the name to pass to mollify, with the emulated cuda path switched on."""

    from mollify_fast import backends

    def setup(backend):
        if backend == "cuda-emulated":
            monkeypatch.setenv(EMULATE, "1")
            backends.availability.cache_clear()  # availability() reads the variable; the registry caches it
            backend_or_skip("cuda")
            return "cuda"
        backend_or_skip(backend)
        return backend

    yield setup
    backends.availability.cache_clear()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("blurs", [(0.3, 2.0), (0.3, 3.2)], ids=["fused", "two-pass"])
def test_per_sample_nan_stays_in_its_own_window(run_backend, backend, blurs):
    """Sample 0 (blur sigma 0.3: radius 1) has a NaN and an inf: (2r + 1)^2 = 9 pixels each turn
    non-finite, not the widest sample's window (radius 6 or 10; a zero weight beyond a sample's
    own radius times NaN is NaN)."""
    name = run_backend(backend)
    H = W = 8 if blurs[1] < 3 else 11
    x = torch.rand(2, 1, H, W)
    x[:, 0, 2, 2] = float("nan")
    x[:, 0, 5, 6] = float("inf")
    bs = torch.tensor(blurs)
    out = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, generator=mf.Generator(1), backend=name)
    want = R.blur(x, bs)
    assert int((~torch.isfinite(want[0])).sum()) == 2 * 9
    for n in range(2):
        assert torch.equal(torch.isfinite(out[n]), torch.isfinite(want[n])), f"sample {n}"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_per_sample_zero_blur_sigma_with_explicit_radius_reads_no_neighbour(run_backend, backend):
    """blur_sigma 0 is the identity even with an explicit radius: its NaN-free pixels stay
    NaN-free next to a NaN (its zero-weight taps must not be summed)."""
    name = run_backend(backend)
    x = torch.rand(2, 1, 12, 12)
    x[:, 0, 5, 5] = float("nan")
    bs = torch.tensor([0.0, 1.0])
    out = mf.mollify(x, 0.0, alpha=1.0, blur_sigma=bs, blur_radius=3, generator=mf.Generator(1), backend=name)
    assert int(torch.isnan(out[0]).sum()) == 1 and torch.equal(out[0].nan_to_num(), x[0].nan_to_num())
    assert int(torch.isnan(out[1]).sum()) == 49


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_radius_is_the_same_for_every_parameter_form(run_backend, backend):
    """blur_sigma = 1/3: a Python float, a numpy float64, a 0-d tensor and a [1] tensor blur
    identically. The kernels take blur sigma in float32, and 3 * float32(1/3) > 1: the radius is
    ceil(3 * s) of that value, 2, whatever the form (the float path used the float64 value, 1)."""
    import numpy as np

    name = run_backend(backend)
    x = torch.rand(1, 1, 5, 6)
    x[0, 0, 2, 2] = float("nan")
    outs = [mf.mollify(x, 0.0, alpha=1.0, blur_sigma=b, generator=mf.Generator(1), backend=name)
            for b in (1 / 3, np.float64(1 / 3), torch.tensor(1 / 3, dtype=torch.float64), torch.tensor([1 / 3]))]
    nans = [int(torch.isnan(o).sum()) for o in outs]
    assert nans == [25] * 4, nans
    for o in outs[1:]:
        assert torch.equal(o.nan_to_num(), outs[0].nan_to_num())


# ------------------------------------------------------------------------------------------
# 3. out= gives exactly the out-of-place result
# ------------------------------------------------------------------------------------------


def _same_values(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x.contiguous()


OUT_CASES = {
    # name: (shape, x layout, how out is given)
    "out-channels_last": ((2, 3, 4, 5), "contiguous", "channels_last"),
    "out-contiguous-x-channels_last": ((2, 3, 4, 5), "channels_last", "contiguous"),
    "out-transposed": ((2, 3, 4, 5), "contiguous", "transposed"),
    "in-place-transposed": ((2, 3, 4, 5), "transposed", "x"),
    "in-place-channels_last": ((2, 3, 4, 5), "channels_last", "x"),
    "in-place-contiguous": ((2, 3, 4, 5), "contiguous", "x"),
    "in-place-tiny": ((3, 5), "contiguous", "x"),
    "out-tiny": ((3, 5), "contiguous", "contiguous"),
}


# The blur needs [N, ..., H, W]; its in-place calls blur a copy, so the layouts matter most.
BLUR_OUT_CASES = ("out-channels_last", "out-contiguous-x-channels_last", "in-place-transposed")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case,blur", [(c, None) for c in OUT_CASES] + [(c, 0.8) for c in BLUR_OUT_CASES],
                         ids=[f"noise-{c}" for c in OUT_CASES] + [f"blur-{c}" for c in BLUR_OUT_CASES])
def test_out_is_exactly_the_out_of_place_result(run_backend, backend, case, blur):
    """Same generator state, torch.equal: out= in another layout, out=x (transposed,
    channels_last, fewer than 16 elements) and return_noise=True may not change a single bit.
    sigma = 0.37 and alpha = 0.61 make alpha * x + sigma * eps round differently with and
    without a fused multiply-add or in another order."""
    name = run_backend(backend)
    shape, x_layout, how = OUT_CASES[case]
    torch.manual_seed(3)
    x = _same_values(torch.randn(shape), x_layout)
    kw = dict(alpha=0.61, blur_sigma=blur, backend=name)
    want = mf.mollify(x, 0.37, generator=mf.Generator(8, 3), **kw)
    got_rn, noise = mf.mollify(x, 0.37, generator=mf.Generator(8, 3), return_noise=True, **kw)
    assert torch.equal(got_rn, want), "return_noise=True changed the output"
    if how == "x":
        out = x.clone(memory_format=torch.preserve_format)
        assert out.stride() == x.stride()
        got = mf.mollify(out, 0.37, generator=mf.Generator(8, 3), out=out, **kw)
    else:
        out = _same_values(torch.empty(shape), how)
        got = mf.mollify(x, 0.37, generator=mf.Generator(8, 3), out=out, **kw)
    assert got is out
    assert torch.equal(out, want), f"max |diff| {(out - want).abs().max().item():.3g}"
    out_n = torch.empty_like(out)
    got, noise2 = mf.mollify(x, 0.37, generator=mf.Generator(8, 3), out=out_n, return_noise=True, **kw)
    assert torch.equal(out_n, want) and torch.equal(noise2, noise)


# ------------------------------------------------------------------------------------------
# 5. sigma = 0 is exactly x: the final rounding to the output dtype
# ------------------------------------------------------------------------------------------


def _special_values(dtype: torch.dtype) -> torch.Tensor:
    """Every kind of value of ``dtype``: +-0, subnormals, normals around the rounding of a
    float32 result, +-max, +-inf, NaN (2 x 32 values, so that the noise kernel's vector and
    scalar lanes both see them)."""
    fi = torch.finfo(dtype)
    vals = [0.0, -0.0, fi.tiny, -fi.tiny, fi.max, -fi.max, float("inf"), float("-inf"), float("nan"),
            1.0, -1.0, 1.0 + fi.eps, 3.0, 65504.0 if fi.max >= 65504.0 else 1.5, 0.1, -0.3]
    if dtype != torch.float64:
        vals += [fi.smallest_normal / 2, fi.smallest_normal / 1024 if dtype != torch.float16 else 2.0**-24]
        vals += [fi.tiny * 3, -fi.tiny * 5]
    else:
        vals += [4.9e-324, -4.9e-324, 1e-310, -1e-310]
    t = torch.tensor(vals, dtype=torch.float64).to(dtype)
    t = torch.cat([t, torch.randn(32 - t.numel()).to(dtype)])
    return torch.stack([t, t.flip(0)]).reshape(2, 1, 4, 8)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_sigma_zero_is_exactly_x(run_backend, backend, dtype):
    """alpha = 1 given and variance preserving sigma = 0 (alpha = sqrt(1 - 0) = 1): out is x,
    bit for bit: 65504 stays 65504 in bfloat16 (the interpreter's float32 -> bfloat16
    conversion truncated it to 65280), subnormals stay, +-inf stay, NaN stays NaN (-0.0 may
    become +0.0: that is IEEE's -0 + 0 * eps for eps > 0)."""
    name = run_backend(backend)
    if name == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend does not run float64")
    x = _special_values(dtype)
    layouts = {"contiguous": x, "transposed": x.transpose(-1, -2).contiguous().transpose(-1, -2)}
    for lname, xl in layouts.items():
        for kw in (dict(alpha=1.0), dict(), dict(alpha=torch.ones(2))):
            out = mf.mollify(xl, 0.0, generator=mf.Generator(1), backend=name, **kw)
            same = (out == x) | (torch.isnan(out) & torch.isnan(x))
            bad = (~same).nonzero()
            assert not len(bad), (f"{lname} {kw}: at {tuple(bad[0].tolist())} got {out[tuple(bad[0])].item()!r}, "
                                  f"expected {x[tuple(bad[0])].item()!r}")
            # -0.0 may come back as +0.0: -0 + sigma * eps is +0 when eps > 0 (IEEE), as in the reference
            signed = (x != 0) & ~torch.isnan(x)  # a NaN's sign bit carries no meaning
            assert torch.equal(torch.signbit(out)[signed], torch.signbit(x)[signed])


# float32 results whose rounding to bfloat16 / float16 tells round-to-nearest-even from truncation,
# overflow to inf from saturation, and keeps subnormals: 65504 (bfloat16: 65536, truncated 65280),
# ties on both sides of an even mantissa, the largest float32 (inf in both), float32 values that
# are bfloat16 subnormals, float16 65520 (a tie between 65504 and the next power: inf).
ROUNDING_CASES = [65504.0, -65504.0, 1 + 3 * 2.0**-8, 1 + 2.0**-8, 1 + 2.0**-8 + 2.0**-20, 3.4028234663852886e38,
                  -3.3961e38, 3.3895e38, 1.5 * 2.0**-133, -2.0**-130 * (1 + 2.0**-3), 2.0**-126 * (1 - 2.0**-9),
                  65520.0, 65519.0, 2.0**-24 * 1.5, 2.0**-25, 0.1, 1.0 / 3]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_final_rounding_is_torchs(run_backend, backend, dtype):
    """out = alpha * 1 + 0 * eps is the float32 alpha rounded once to dtype exactly as
    ``torch.Tensor.to`` rounds it (to nearest, ties to even, overflow to inf, subnormals kept)."""
    name = run_backend(backend)
    alpha = torch.tensor(ROUNDING_CASES, dtype=torch.float32)
    want = alpha.to(dtype)[:, None, None].expand(-1, 4, 8)
    for x in (torch.ones(len(alpha), 4, 8, dtype=dtype), torch.ones(len(alpha), 8, 4, dtype=dtype).transpose(1, 2)):
        for blur in (None, 0.0, torch.zeros(len(alpha))):
            out = mf.mollify(x, 0.0, alpha=alpha, blur_sigma=blur, generator=mf.Generator(1), backend=name)
            bad = (out != want).nonzero()
            assert not len(bad), (f"blur {blur}: alpha {alpha[bad[0][0]].item()!r} gave {out[tuple(bad[0])].item()!r}, "
                                  f"torch rounds it to {want[tuple(bad[0])].item()!r}")

"""README, "The contract, in short": ``mollify(x, sigma, noise=eps)`` uses the caller's eps.

Every backend (``reference``, ``torch``, ``cpu``, ``triton`` under the interpreter, ``cuda``
emulated on the host) computes ``alpha * B(x) + sigma * eps`` from the given eps converted to
the compute dtype, within float32 rounding of the float64 formula; no generator moves; out=,
out=x and out=noise give the out-of-place result; refusals change nothing.
"""
import math
import os

import pytest
import torch

import mollify_fast as mf
from mollify_fast._call import Call
from mollify_fast import backends

from conftest import assert_out_given_eps, backend_or_skip

BACKENDS = ["reference", "torch", "cpu", "triton", "cuda"]
LOW = (torch.float16, torch.bfloat16)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    name = request.param
    if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors run the triton backend only under TRITON_INTERPRET=1")
    if name == "cuda":
        monkeypatch.setenv("MOLLIFY_FAST_CUDA_EMULATE", "1")  # the kernels' code on the host
        backends.availability.cache_clear()
    backend_or_skip(name)
    yield name
    backends.availability.cache_clear()


def _skip_dtype(backend, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend does not run float64")


def _data(shape=(3, 2, 9, 10), dtype=torch.float32, edtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    e = torch.randn(shape, generator=g, dtype=torch.float64).to(edtype or dtype)
    return x, e


PARAMS = {
    "scalar": dict(sigma=0.4, alpha=0.8),
    "0-d": dict(sigma=torch.tensor(0.4), alpha=torch.tensor(0.8, dtype=torch.float64)),
    "per-sample": dict(sigma=torch.tensor([0.1, 0.5, 0.9]), alpha=torch.tensor([1.0, 0.5, -0.25])),
    "variance-preserving": dict(sigma=0.6, alpha=None),
    "per-sample [N,1,1,1], vp": dict(sigma=torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1), alpha=None),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("params", list(PARAMS))
def test_matches_the_formula_with_the_given_eps(backend, params, dtype):
    _skip_dtype(backend, dtype)
    x, e = _data(dtype=dtype)
    kw = PARAMS[params]
    out = mf.mollify(x, kw["sigma"], alpha=kw["alpha"], noise=e, backend=backend)
    assert mf.last_backend() == backend
    assert out.dtype == dtype and out.shape == x.shape
    assert_out_given_eps(out, x, e, kw["sigma"], alpha=kw["alpha"], what=backend, eps_rounded=False)
    ref = mf.mollify(x, kw["sigma"], alpha=kw["alpha"], noise=e, backend="reference")
    assert_out_given_eps(ref, x, e, kw["sigma"], alpha=kw["alpha"], what="reference", eps_rounded=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("blur", ["fused r3", "per-sample", "radius >= min(H, W)"])
def test_blur(backend, blur, dtype):
    x, e = _data((2, 2, 9, 10), dtype=dtype, seed=1)
    kw = {"fused r3": dict(blur_sigma=1.0),
          "per-sample": dict(blur_sigma=torch.tensor([0.0, 0.7])),
          "radius >= min(H, W)": dict(blur_sigma=4.0, blur_radius=12)}[blur]
    out = mf.mollify(x, 0.3, alpha=0.9, noise=e, backend=backend, **kw)
    assert mf.last_backend() == backend
    assert_out_given_eps(out, x, e, 0.3, alpha=0.9, what=f"{backend} {blur}", eps_rounded=False, **kw)


@pytest.mark.parametrize("edtype", [torch.float32, torch.float64])
def test_blur_beyond_the_cuda_tiles_shared_memory(backend, edtype):
    """Radius 56 on 60 x 61: below min(H, W), but the cuda backend's tile plus halo does not fit
    its shared-memory budget, so it takes the direct kernel (the others their usual paths, which
    other tests cover: interpreted Triton took 25 s per case here)."""
    if backend == "triton":
        pytest.skip("a case for the cuda backend's tiling; Triton's fused blur with noise= is covered by test_blur")
    x, e = _data((1, 1, 60, 61), edtype=edtype, seed=15)
    kw = dict(blur_sigma=56 / 3, blur_radius=56)
    out = mf.mollify(x, 0.2, alpha=1.0, noise=e, backend=backend, **kw)
    assert_out_given_eps(out, x, e, 0.2, alpha=1.0, what=backend, eps_rounded=False, **kw)


@pytest.mark.parametrize("blur", [None, 1.0, 4.0])
def test_out_and_in_place_equal_the_out_of_place_result(backend, blur):
    x, e = _data(seed=2)
    kw = dict(alpha=0.7, blur_sigma=blur, noise=e, backend=backend)
    want = mf.mollify(x, 0.5, **kw)
    out = torch.full_like(x, float("nan"))
    assert mf.mollify(x, 0.5, out=out, **kw) is out
    assert torch.equal(out, want)
    y = x.clone()
    assert mf.mollify(y, 0.5, out=y, **kw) is y  # in place, blur included
    assert torch.equal(y, want)
    assert torch.equal(e, _data(seed=2)[1])  # eps is only read


def test_out_may_be_the_noise_itself(backend):
    x, e = _data(seed=3)
    want = mf.mollify(x, 0.5, alpha=0.7, noise=e, backend=backend)
    for blur in (None, 1.0):
        want = mf.mollify(x, 0.5, alpha=0.7, blur_sigma=blur, noise=e, backend=backend)
        buf = e.clone()
        assert mf.mollify(x, 0.5, alpha=0.7, blur_sigma=blur, noise=buf, out=buf, backend=backend) is buf
        assert torch.equal(buf, want)


@pytest.mark.parametrize("layout", ["channels_last x, transposed eps", "expanded eps", "strided eps, out"])
def test_layouts(backend, layout):
    x, e = _data((3, 4, 6, 8), seed=4)
    if layout == "channels_last x, transposed eps":
        x = x.contiguous(memory_format=torch.channels_last)
        e = e.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "expanded eps":
        e = e[:, :, :1, :1].expand_as(x)  # one eps per (sample, channel): stride 0 over H, W
    out = None
    if layout == "strided eps, out":
        e = torch.cat([e, e], -1)[..., ::2]
        out = torch.empty(3, 4, 6, 16)[..., 1::2]
    for blur in (None, 1.0):
        res = mf.mollify(x, 0.5, alpha=0.7, blur_sigma=blur, noise=e, out=out, backend=backend)
        assert_out_given_eps(res, x, e, 0.5, alpha=0.7, blur_sigma=blur, what=f"{backend} {layout}", eps_rounded=False)
        if layout == "channels_last x, transposed eps":
            assert res.is_contiguous(memory_format=torch.channels_last)


def test_more_dims_than_the_kernels_index(backend):
    """9 dims that do not merge: every backend runs its kernels on contiguous copies."""
    x, e = _data((2,) * 9, seed=16)
    x = x.permute(*reversed(range(9)))
    e = e.permute(1, 0, *range(2, 9))
    for blur in (None, 1.0):
        out = mf.mollify(x, 0.5, alpha=0.7, blur_sigma=blur, noise=e, backend=backend)
        assert_out_given_eps(out, x, e, 0.5, alpha=0.7, blur_sigma=blur, what=backend, eps_rounded=False)


def test_float32_eps_with_bfloat16_x_keeps_its_float32_values(backend):
    """x = -bf16(eps): out = eps - bf16(eps), exact in float32, so the result is exactly that
    residual rounded once to bfloat16; an eps rounded to bfloat16 first would give 0."""
    _, e = _data((2, 3, 8, 8), edtype=torch.float32, seed=5)
    x = -e.to(torch.bfloat16)
    for blur in (None, 0.0):
        out = mf.mollify(x, 1.0, alpha=1.0, blur_sigma=blur, noise=e, backend=backend)
        want = (x.double() + e.double()).to(torch.bfloat16)
        assert torch.equal(out, want)
        assert (want != 0).float().mean() > 0.9  # the check can fail: the residuals are not 0


@pytest.mark.parametrize("xdtype,edtype", [(torch.bfloat16, torch.float16), (torch.float16, torch.float64),
                                           (torch.float32, torch.float64), (torch.float32, torch.bfloat16),
                                           (torch.float64, torch.float32), (torch.float32, torch.float16)])
def test_eps_dtype_other_than_x(backend, xdtype, edtype):
    _skip_dtype(backend, xdtype)
    x, e = _data(dtype=xdtype, edtype=edtype, seed=6)
    for blur in (None, 1.0):
        out = mf.mollify(x, 0.6, alpha=0.8, blur_sigma=blur, noise=e, backend=backend)
        # eps in the compute dtype: a float64 eps rounds to float32 for float32 x (the helper converts).
        assert_out_given_eps(out, x, e, 0.6, alpha=0.8, blur_sigma=blur, what=f"{backend} {xdtype} {edtype}",
                             eps_rounded=False)


@pytest.mark.parametrize("edtype", [torch.float32, torch.float64])
def test_return_noise_gives_a_copy_in_x_dtype(backend, edtype):
    x, e = _data(dtype=torch.float32, edtype=edtype, seed=7)
    out, eps = mf.mollify(x, 0.5, noise=e, return_noise=True, backend=backend)
    assert eps.dtype == x.dtype and torch.equal(eps, e.to(x.dtype))
    assert eps.data_ptr() != e.data_ptr()
    assert torch.equal(out, mf.mollify(x, 0.5, noise=e, backend=backend))
    buf = torch.empty_like(x)
    out2, eps2 = mf.mollify(x, 0.5, noise=e, return_noise=True, out=buf, blur_sigma=1.0, backend=backend)
    assert out2 is buf and torch.equal(eps2, e.to(x.dtype))


def test_no_generator_moves(backend):
    x, e = _data(seed=8)
    g = mf.Generator(123, 45)
    before = g.state_dict()
    rng = torch.get_rng_state()
    for kw in (dict(generator=g), dict(), dict(blur_sigma=1.0), dict(blur_sigma=4.0, blur_radius=12),
               dict(return_noise=True), dict(out=torch.empty_like(x))):
        mf.mollify(x, 0.5, noise=e, backend=backend, **kw)
        mf.mollify(x, torch.tensor([0.1, 0.2, 0.3]), alpha=torch.tensor([0.9, 0.8, 0.7]), noise=e, backend=backend, **kw)
    assert g.state_dict() == before and g.offset == 45
    assert torch.equal(torch.get_rng_state(), rng)
    # and the draw that follows is the one an untouched generator gives
    assert torch.equal(mf.mollify(x, 0.5, generator=g, backend=backend),
                       mf.mollify(x, 0.5, generator=mf.Generator(123, 45), backend=backend))


def test_torch_backend_equals_reference():
    x, e = _data((4, 3, 8, 8), dtype=torch.float32, seed=9)
    s = torch.tensor([0.1, 0.2, 0.3, 0.4])
    a = torch.sqrt(1 - s * s)
    for blur in (None, 1.0):
        t = mf.mollify(x, s, noise=e, blur_sigma=blur, backend="torch")
        r = mf.mollify(x, s, noise=e, blur_sigma=blur, backend="reference")
        assert torch.allclose(t, r, rtol=4 * 2**-24 * (2 * 3 + 1 + 8), atol=1e-6)
        assert_out_given_eps(t, x, e, s, alpha=a, blur_sigma=blur, what="torch", eps_rounded=False)


@pytest.mark.parametrize("name", ["cpu", "torch", "triton"])
def test_compile_inductor_fullgraph_equals_eager(name):
    if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors run the triton backend only under TRITON_INTERPRET=1")
    backend_or_skip(name)
    torch._dynamo.reset()

    g = mf.Generator(5)

    def step(x, e, s):
        y, eps = mf.mollify(x, s, alpha=0.9, blur_sigma=1.0, noise=e, return_noise=True, generator=g, backend=name)
        z = mf.mollify(x, 0.25, noise=e * 2, backend=name)
        return y + 1, eps, z

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    x, e = _data((2, 3, 8, 8), seed=10)
    rng = torch.get_rng_state()
    for s in (0.3, 0.7):
        got, want = compiled(x, e, s), step(x, e, s)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), rng) and g.offset == 0


@pytest.mark.parametrize("backend_name", ["torch", "reference", "cpu"])
def test_opcheck_with_noise(backend_name):
    backend_or_skip(backend_name)
    x, e = _data((4, 3, 8, 8), seed=11)
    g = mf.Generator(1)
    args = Call(x, 0.3, blur_sigma=1.0, stream=g._state.clone(), backend=backend_name, return_noise=True,
                given_noise=e).op_args()
    torch.library.opcheck(torch.ops.mollify_fast.mollify.default, args)
    out, noise = torch.empty_like(x), torch.empty_like(x)
    args = Call(x, torch.rand(4), stream=g._state.clone(), backend=backend_name, out=out, noise=noise,
                given_noise=e.double()).out_op_args(False)
    torch.library.opcheck(torch.ops.mollify_fast.mollify_out.default, args)


def test_vmap_uses_each_slice_of_a_batched_noise():
    x, _ = _data((2, 3, 4, 5), seed=12)
    e = torch.randn(4, 2, 3, 4, 5)
    for randomness in ("error", "different", "same"):
        got = torch.func.vmap(lambda ei: mf.mollify(x, 0.5, noise=ei, backend="cpu"), randomness=randomness)(e)
        for b in range(4):
            assert torch.equal(got[b], mf.mollify(x, 0.5, noise=e[b], backend="cpu"))
    xs = torch.randn(4, 2, 3, 4, 5)
    got = torch.func.vmap(lambda xi, ei: mf.mollify(xi, 0.5, noise=ei, blur_sigma=1.0, backend="cpu"),
                          in_dims=(0, 1))(xs, e.movedim(0, 1))
    for b in range(4):
        assert torch.equal(got[b], mf.mollify(xs[b], 0.5, noise=e[b], blur_sigma=1.0, backend="cpu"))


def _refusal_cases(x, out):
    base = x.new_empty(3, 2, 9, 20)
    return [
        (TypeError, "noise must be a torch.Tensor", dict(noise=x.numpy())),
        (TypeError, "noise must be float16, bfloat16, float32 or float64", dict(noise=torch.zeros(x.shape, dtype=torch.int32))),
        (TypeError, "noise must be float16, bfloat16, float32 or float64", dict(noise=torch.zeros(x.shape, dtype=torch.complex64))),
        (TypeError, r"noise must be a dense \(strided\) tensor.*noise.to_dense", dict(noise=torch.zeros_like(x).to_sparse())),
        (ValueError, r"noise must have x's shape.*expand_as", dict(noise=torch.zeros(3, 2, 9, 1))),
        (ValueError, r"noise is on meta but x is on cpu.*noise.to\(x.device\)", dict(noise=torch.empty(x.shape, device="meta"))),
        (RuntimeError, r"noise requires grad.*noise.detach\(\)", dict(noise=torch.zeros_like(x, requires_grad=True))),
        (ValueError, "out partially overlaps noise", dict(noise=base[..., :10], out=base[..., 5:15])),
        (ValueError, "out partially overlaps noise", dict(noise=out.view(torch.float16)[..., :10], out=out)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_refusals_change_nothing(backend, case):
    x, _ = _data(seed=13)
    out = torch.full_like(x, 7.0)
    err, msg, kw = _refusal_cases(x, out)[case]
    o = kw.pop("out", out)
    o.fill_(7.0)
    x0, o0 = x.clone(), o.clone()
    g = mf.Generator(9, 3)
    rng = torch.get_rng_state()
    with pytest.raises(err, match=msg):
        mf.mollify(x, 0.5, generator=g, out=o, backend=backend, **kw)
    assert torch.equal(x, x0) and torch.equal(o, o0)
    assert g.offset == 3 and torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("mode", ["noise", "noise+blur"])
def test_mollifier_passes_noise_through(mode):
    g = mf.Generator(21, 4)
    mol = mf.Mollifier(mollify_steps=100, mode=mode, blur_sigma_max=None if mode == "noise" else 2.0,
                       generator=g, backend="cpu")
    x, e = _data(seed=14)
    rng = torch.get_rng_state()
    sigma = math.sqrt(mol.gamma(10))
    blur = None if mode == "noise" else 2.0 * sigma
    got = mol(x, 10, noise=e)
    assert torch.equal(got, mf.mollify(x, sigma, blur_sigma=blur, noise=e, backend="cpu"))
    assert g.offset == 4 and torch.equal(torch.get_rng_state(), rng)
    assert mol(x, 100, noise=e) is x  # past the window: x itself, as without noise=


# ---- noise= with the input map (uint8 x, input_scale / input_shift, out_dtype) ----

@pytest.mark.parametrize("blur", [None, 1.0])
@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16])
def test_with_an_input_map_equals_the_reference(backend, blur, out_dtype):
    # The map runs into a temporary (the mapped kernels draw their own eps), then the fused pass
    # reads the given eps: every backend equals the reference given the same eps, and no
    # generator moves.
    g = torch.Generator().manual_seed(21)
    x = torch.randint(0, 256, (3, 2, 9, 10), generator=g, dtype=torch.uint8)
    e = torch.randn(x.shape, generator=g)
    kw = dict(blur_sigma=blur, input_scale=2 / 255, input_shift=-1.0, out_dtype=out_dtype)
    gen = mf.Generator(5)
    got, eps = mf.mollify(x, 0.4, noise=e, return_noise=True, generator=gen, backend=backend, **kw)
    want = mf.mollify(x, 0.4, noise=e, backend="reference", **kw)
    assert got.dtype == (out_dtype or torch.float32) and eps.dtype == got.dtype
    assert gen.offset == 0
    assert torch.equal(eps, e.to(got.dtype))
    if got.dtype == torch.bfloat16:  # float32 values a few ulps apart, rounded once: one bfloat16 ulp
        tol = dict(rtol=2 ** -7, atol=2 ** -9)
    else:  # a few float32 ulps of |x_f| + sigma |eps| (fused multiply-adds or not), |x_f| <= 1
        tol = dict(rtol=0, atol=2 ** -22 * (1 + 0.4 * float(e.abs().max())))
    torch.testing.assert_close(got, want, **tol)
    if out_dtype is None:
        # and the reference itself is alpha * B(x_f) + sigma * eps (x_f: the map's float32 value)
        xf = mf.reference.input_map(x, torch.float32, 2 / 255, -1.0, None)
        assert_out_given_eps(want, xf, e, 0.4, blur_sigma=blur, eps_rounded=False)


def test_with_dequantize_is_refused_before_anything_moves(backend):
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    e = torch.randn(x.shape)
    gen = mf.Generator(5)
    out = torch.full(x.shape, 7.0)
    with pytest.raises(ValueError, match="noise=.*dequantize"):
        mf.mollify(x, 0.4, noise=e, dequantize=True, generator=gen, out=out, backend=backend)
    assert gen.offset == 0 and bool((out == 7.0).all())

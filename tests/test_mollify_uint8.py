"""uint8 batches in, mollified floats out: the input map (README, "The contract, in short").

``x_f = ((x + u) * input_scale) + input_shift`` (``u`` the dequantisation uniform when
``dequantize``), then ``out = alpha * B(x_f) + sigma * eps`` in the compute dtype, rounded once
to ``out_dtype``. The reference is checked against a float64 computation from its own
uniforms and normals; every Philox backend against the reference; the ``torch`` backend by
distribution; the errors by what they leave untouched; and the compiled op against eager.
"""
import math

import numpy as np
import pytest
import torch

import mollify_fast as mf
from mollify_fast._call import Call
from mollify_fast import backends, reference
from mollify_fast.backends._native import extension

from conftest import EPS, assert_backend_parity, assert_parity, assert_within, backend_or_skip

PHILOX = ["cpu", "triton", "cuda"]


def _groups(n: int) -> int:
    return -(-n // 4)


def _images(shape=(3, 2, 7, 9), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    x.view(-1)[:4] = torch.tensor([0, 255, 1, 254], dtype=torch.uint8)  # the extremes
    return x


@pytest.fixture
def philox_backend(request, monkeypatch):
    name = request.param
    if name == "cuda":
        ext, why = extension()
        if ext is None:
            pytest.skip(f"the extension is not built: {why}")
        monkeypatch.setenv("MOLLIFY_FAST_CUDA_EMULATE", "1")
        backends.availability.cache_clear()
    backend_or_skip(name)
    yield name
    backends.availability.cache_clear()


# ---- the reference: the oracle itself ----

def _word_uniforms(seed: int, counter: int) -> np.ndarray:
    """The four uniforms of one counter group, from the Philox words by the README's map."""
    c = torch.tensor([[counter & 0xFFFFFFFF, counter >> 32, 0, 0]], dtype=torch.int64)
    k = torch.tensor([seed & 0xFFFFFFFF, seed >> 32], dtype=torch.int64)
    w = reference.philox4x32_10(c, k)[0].numpy().astype(np.uint32).view(np.int32)
    i = np.where(w < 0, ~w, w)
    return i.astype(np.float32) * np.float32(4.6566127342e-10)


@pytest.mark.parametrize("numel,offset", [(1, 0), (7, 5), (8, 2**32 - 1), (13, 2**64 - 2)])
def test_dequant_uniforms_are_the_words_of_the_groups_after_the_normals(numel, offset):
    seed = 0x1234_5678_9ABC_DEF0
    u = reference.dequant_uniforms(seed, offset, numel)
    G = _groups(numel)
    assert u.dtype == torch.float32 and u.shape == (numel,)
    for j in range(G):
        want = _word_uniforms(seed, (offset + G + j) % 2**64)
        got = u[4 * j:4 * j + 4].numpy()
        assert np.array_equal(got, want[:got.shape[0]]), j
    assert bool(((u >= 0) & (u < 1)).all())


@pytest.mark.parametrize("dequantize", [False, True])
@pytest.mark.parametrize("blur", [None, 0.8])
def test_reference_equals_a_float64_computation_from_its_uniforms_and_normals(dequantize, blur):
    x = _images()
    seed, offset, n = 99, 41, x.numel()
    scale, shift, sigma, alpha = 2 / 255, -1.0, 0.3, 0.9
    out, eps = reference.mollify(x, sigma, alpha=alpha, blur_sigma=blur, seed=seed, offset=offset,
                                 return_noise=True, input_scale=scale, input_shift=shift, dequantize=dequantize)
    assert out.dtype == torch.float32 and eps.dtype == torch.float32
    # The normals are exactly those of the plain op on the same stream.
    assert torch.equal(eps.reshape(-1), reference.normals(seed, offset, n))
    u = reference.dequant_uniforms(seed, offset, n).double() if dequantize else torch.zeros(n, dtype=torch.float64)
    s32 = float(np.float32(scale))
    xt = (x.double().reshape(-1) + u)
    xf64 = (xt * s32 + shift).reshape(x.shape)
    # Three float32 roundings of the map (sum, product, shift): u32 of each intermediate.
    u32 = EPS[torch.float32] / 2
    xf_err = u32 * (xt.abs() * (1 + s32) + (xt.abs() * s32 + abs(shift))).reshape(x.shape)
    bx, berr, babs = xf64, xf_err, xf64.abs()
    taps = 0
    if blur is not None:  # the blur is linear with positive weights: errors and |x| blur along
        b = torch.tensor(float(np.float32(blur)), dtype=torch.float64)
        bx, berr, babs = reference.blur(xf64, b), reference.blur(xf_err, b), reference.blur(xf64.abs(), b)
        taps = 2 * (2 * math.ceil(3 * blur) + 1) + 8
    a32 = float(np.float32(alpha))
    se = float(np.float32(sigma)) * eps.double()
    want = a32 * bx + se
    bound = abs(a32) * berr + 4 * u32 * (abs(a32) * bx.abs() + se.abs()) + taps * u32 * abs(a32) * babs
    assert_within(out, want, bound, "reference vs float64")


def test_reference_defaults_uint8_to_float32_and_01():
    x = _images()
    out = reference.mollify(x, 0.0, alpha=1.0)
    assert out.dtype == torch.float32
    assert torch.equal(out, x.float() * torch.tensor(1 / 255, dtype=torch.float32))
    assert out.max() == 1.0 and out.min() == 0.0
    deq = reference.mollify(x, 0.0, alpha=1.0, dequantize=True, seed=3)
    y = deq.double() * 256 - x.double()
    assert bool(((y >= 0) & (y < 1 + 1e-4)).all())  # (x + u) / 256 with u in [0, 1)
    assert float(deq.max()) < 1.0


# ---- the public op on the reference backend: stream, defaults, dtypes ----

@pytest.mark.parametrize("dequantize", [False, True])
def test_generator_advances_by_g_or_2g(dequantize):
    x = _images((5, 3, 3, 3))  # 135 elements: G = 34
    for backend in ("reference", "torch", "cpu"):
        if backend == "cpu":
            backend_or_skip("cpu")
        g = mf.Generator(7, 2**64 - 3)
        mf.mollify(x, 0.2, generator=g, dequantize=dequantize, backend=backend)
        G = _groups(x.numel())
        assert g.offset == (2**64 - 3 + (2 * G if dequantize else G)) % 2**64, backend


def test_public_reference_equals_reference_module():
    x = _images()
    g = mf.Generator(11, 5)
    out, eps = mf.mollify(x, 0.4, alpha=0.8, generator=g, return_noise=True, input_scale=2 / 255,
                          input_shift=-1, dequantize=True, backend="reference")
    want, want_eps = reference.mollify(x, 0.4, alpha=0.8, seed=11, offset=5, return_noise=True,
                                       input_scale=2 / 255, input_shift=-1, dequantize=True)
    assert torch.equal(out, want) and torch.equal(eps, want_eps)


@pytest.mark.parametrize("out_dtype", [None, torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_out_dtype_and_compute_dtype(out_dtype):
    x = _images()
    g = mf.Generator(2)
    out, eps = mf.mollify(x, 0.5, generator=g, return_noise=True, out_dtype=out_dtype, backend="reference")
    dt = torch.float32 if out_dtype is None else out_dtype
    assert out.dtype == dt and eps.dtype == dt
    # Computed in float32 (float64 for a float64 output), rounded once to the output dtype.
    acc = torch.float64 if dt == torch.float64 else torch.float32
    xf = x.to(acc) * torch.tensor(1 / 255, dtype=acc)
    z = reference.noise_like(x, 2, 0).to(acc)
    want = (torch.tensor(math.sqrt(0.75), dtype=torch.float64).to(acc) * xf + 0.5 * z).to(dt)
    assert torch.equal(out, want)


def test_float_x_with_a_map_and_float64_out_computes_in_float64():
    x = torch.randn(4, 6, dtype=torch.float32)
    out = mf.mollify(x, 0.0, alpha=1.0, input_scale=1 / 3, input_shift=0.25, out_dtype=torch.float64,
                     backend="reference")
    assert out.dtype == torch.float64
    assert torch.equal(out, x.double() * (1 / 3) + 0.25)
    # float x, map, own dtype: float32 compute, no fast path (the map is applied).
    y = mf.mollify(x, 0.0, alpha=1.0, input_scale=2.0, input_shift=-1.0, backend="cpu" if
                   mf.available_backends()["cpu"][0] else "reference")
    assert torch.equal(y, x * 2.0 - 1.0)


def test_empty_batches():
    for shape in [(0,), (0, 3, 4, 4), (2, 0, 5)]:
        x = torch.empty(shape, dtype=torch.uint8)
        g = mf.Generator(1)
        out, eps = mf.mollify(x, 0.1, generator=g, dequantize=True, return_noise=True)
        assert out.shape == x.shape and out.dtype == torch.float32 and eps.dtype == torch.float32
        assert g.offset == 0


def test_out_and_return_noise_any_layout():
    x = _images((2, 3, 6, 5))
    want, want_eps = mf.mollify(x, 0.3, generator=mf.Generator(4), dequantize=True, return_noise=True,
                                backend="reference")
    buf = torch.full((2, 3, 6, 10), 7.0)
    out = buf[..., ::2]
    res, eps = mf.mollify(x, 0.3, generator=mf.Generator(4), dequantize=True, return_noise=True, out=out,
                          backend="reference")
    assert res is out and torch.equal(out, want) and torch.equal(eps, want_eps)
    assert bool((buf[..., 1::2] == 7.0).all())


# ---- every Philox backend equals the reference ----

def _mapped_reference(x, seed, offset, scale, shift, dequantize, acc):
    u = reference.dequant_uniforms(seed, offset, x.numel()).reshape(x.shape) if dequantize else None
    if scale is None:
        scale = reference.default_input_scale(x.dtype, dequantize)
    return reference.input_map(x, acc, scale, shift, u)


CASES = [
    # (x dtype, out_dtype, scale, shift, dequantize, blur)
    (torch.uint8, None, None, 0.0, False, None),
    (torch.uint8, None, None, 0.0, True, None),
    (torch.uint8, torch.float32, 2 / 255, -1.0, True, 0.9),
    (torch.uint8, torch.float64, 2 / 255, -1.0, True, None),
    (torch.float32, None, 0.5, 0.125, True, None),
    (torch.float16, torch.float32, 3.0, -2.0, False, 0.6),
]


@pytest.mark.parametrize("philox_backend", PHILOX, indirect=True)
@pytest.mark.parametrize("xd,od,scale,shift,deq,blur", CASES)
def test_philox_backends_equal_the_reference(philox_backend, xd, od, scale, shift, deq, blur):
    name = philox_backend
    x = _images((3, 2, 9, 11)) if xd == torch.uint8 else torch.randn(3, 2, 9, 11).to(xd)
    dt = od or (torch.float32 if xd == torch.uint8 else xd)
    if name == "triton" and dt == torch.float64:
        with pytest.raises(mf.BackendUnavailableError, match="float64"):
            mf.mollify(x, 0.3, out_dtype=od, backend=name)
        return
    seed, offset = 1234, 77
    kw = dict(alpha=0.9, input_scale=scale, input_shift=shift, dequantize=deq, out_dtype=od, blur_sigma=blur)
    g = mf.Generator(seed, offset)
    out, eps = mf.mollify(x, 0.3, generator=g, return_noise=True, backend=name, **kw)
    assert mf.last_backend() == name
    assert g.offset == offset + _groups(x.numel()) * (2 if deq else 1)
    want, want_eps = mf.mollify(x, 0.3, generator=mf.Generator(seed, offset), return_noise=True,
                                backend="reference", **kw)
    assert out.dtype == dt and eps.dtype == dt
    acc = torch.float64 if torch.float64 in (xd, dt) else torch.float32
    xf = _mapped_reference(x, seed, offset, scale, shift, deq, acc)
    assert_backend_parity(out, eps, want, want_eps, xf, 0.3, alpha=0.9, blur_sigma=blur, what=name)
    # out= in another layout and return_noise give the same numbers.
    out2 = torch.empty(x.shape[::-1], dtype=dt).permute(3, 2, 1, 0)
    mf.mollify(x, 0.3, generator=mf.Generator(seed, offset), out=out2, backend=name, **kw)
    assert torch.equal(out2, out)


@pytest.mark.parametrize("philox_backend", PHILOX, indirect=True)
def test_philox_backends_strided_uint8_and_float16_out(philox_backend):
    name = philox_backend
    big = _images((4, 3, 8, 14))
    x = big[..., ::2].transpose(1, 2)  # a strided uint8 view
    kw = dict(dequantize=True, out_dtype=torch.float16, input_scale=1 / 128, input_shift=-1.0)
    out = mf.mollify(x, 0.2, generator=mf.Generator(5), backend=name, **kw)
    want = mf.mollify(x, 0.2, generator=mf.Generator(5), backend="reference", **kw)
    assert out.dtype == torch.float16
    assert_parity(out, want, name)


NATIVE = {"triton": "noise", "cpu": "noise", "cuda": "noise"}  # kernels that apply the map themselves (None: not yet)


@pytest.mark.parametrize("philox_backend", PHILOX, indirect=True)
@pytest.mark.parametrize("xd", [torch.uint8, torch.float16, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_map_alone_is_bit_exact_and_fused(philox_backend, xd, layout, monkeypatch):
    """sigma = 0, alpha = 1: out is x_f itself, so the kernel's uniforms and the map's three
    roundings must be the reference's exactly; where the kernel has the map, no temporary."""
    name = philox_backend
    if NATIVE[name] is None:
        pytest.skip(f"the {name} kernel has no input map of its own yet")
    import importlib

    mollify_module = importlib.import_module("mollify_fast._op")

    def no_temporary(*a, **k):
        raise AssertionError("the mapped temporary ran")

    monkeypatch.setattr(mollify_module, "_run_mapped", no_temporary)
    base = _images((3, 5, 7, 6)) if xd == torch.uint8 else (torch.randn(3, 5, 7, 6) * 100).to(xd)
    x = base if layout == "contiguous" else base.transpose(1, 3)[:, ::2]
    kw = dict(alpha=1.0, input_scale=2 / 255, input_shift=-1.0, dequantize=True, out_dtype=torch.float32)
    g = mf.Generator(17, 2**32 - 3)
    out, eps = mf.mollify(x, 0.0, generator=g, backend=name, return_noise=True, **kw)
    want, want_eps = mf.mollify(x, 0.0, generator=mf.Generator(17, 2**32 - 3), backend="reference",
                                return_noise=True, **kw)
    assert torch.equal(out, want)
    assert g.offset == 2**32 - 3 + 2 * _groups(x.numel())
    from conftest import assert_noise_parity

    assert_noise_parity(eps, want_eps, name)


@pytest.mark.parametrize("philox_backend", PHILOX, indirect=True)
@pytest.mark.parametrize("od", [torch.float32, torch.float64])
def test_per_sample_parameters_with_the_map(philox_backend, od):
    name = philox_backend
    if name == "triton" and od == torch.float64:
        pytest.skip("triton refuses a float64 compute dtype")
    x = _images((5, 3, 4, 6))
    sigma = torch.tensor([0.0, 0.1, 0.5, 1.0, 2.0])
    alpha = torch.tensor([1.0, -0.5, 0.25, 0.0, 3.0])
    kw = dict(alpha=alpha, input_scale=1 / 127.5, input_shift=-1.0, dequantize=True, out_dtype=od, return_noise=True)
    out, eps = mf.mollify(x, sigma, generator=mf.Generator(8, 3), backend=name, **kw)
    want, want_eps = mf.mollify(x, sigma, generator=mf.Generator(8, 3), backend="reference", **kw)
    xf = _mapped_reference(x, 8, 3, 1 / 127.5, -1.0, True, od)
    assert_backend_parity(out, eps, want, want_eps, xf, sigma, alpha=alpha, what=name)


# ---- the torch backend: same semantics, PyTorch's RNG ----

def test_torch_backend_dequantisation_distribution():
    x = torch.full((64, 3, 32, 32), 100, dtype=torch.uint8)
    g = mf.Generator(8)
    out = mf.mollify(x, 0.0, alpha=1.0, generator=g, dequantize=True, backend="torch")
    assert out.dtype == torch.float32
    u = out.double() * 256 - 100  # (x + u) / 256, exact up to float32 rounding of the product
    assert bool(((u >= -1e-4) & (u < 1 + 1e-4)).all())
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    # Reproducible per generator state, different for the next state.
    again = mf.mollify(x, 0.0, alpha=1.0, generator=mf.Generator(8), dequantize=True, backend="torch")
    assert torch.equal(again, out)
    nxt = mf.mollify(x, 0.0, alpha=1.0, generator=g, dequantize=True, backend="torch")
    assert not torch.equal(nxt, out)


def test_torch_backend_noise_and_map_semantics():
    x = _images((32, 3, 16, 16))
    kw = dict(input_scale=2 / 255, input_shift=-1.0, return_noise=True, backend="torch")
    out, eps = mf.mollify(x, 0.5, alpha=0.75, generator=mf.Generator(1), **kw)
    assert out.dtype == eps.dtype == torch.float32
    from conftest import check_standard_normal

    check_standard_normal(eps)
    xf = x.float() * torch.tensor(2 / 255, dtype=torch.float32) - 1.0
    assert_within(out, 0.75 * xf.double() + 0.5 * eps.double(), 4e-7 * (1 + out.double().abs()), "torch")
    # float16 output: one rounding of the float32 result.
    o16, e16 = mf.mollify(x, 0.5, alpha=0.75, generator=mf.Generator(1), out_dtype=torch.float16, **kw)
    assert o16.dtype == e16.dtype == torch.float16
    assert torch.equal(e16, eps.half())
    assert torch.equal(o16, out.half())


# ---- errors: refused before anything is written or any generator moves ----

def _refusals():
    x = _images((2, 3, 4, 4))
    return x, [
        (TypeError, "out_dtype", dict(out_dtype=torch.int32)),
        (TypeError, "out_dtype", dict(out_dtype="float32")),
        (TypeError, "out_dtype=torch.float32", dict(out=torch.zeros(2, 3, 4, 4, dtype=torch.float16))),
        (TypeError, "out_dtype=torch.float16", dict(out=torch.zeros(2, 3, 4, 4), out_dtype=torch.float16)),
        (TypeError, "uint8 x cannot be its own out", dict(out=x)),
        (ValueError, "input_scale must be finite", dict(input_scale=float("nan"))),
        (ValueError, "input_shift must be finite", dict(input_shift=float("inf"))),
        (ValueError, "input_scale must be finite", dict(input_scale=np.float64("nan"))),
        (ValueError, "does not fit in float32", dict(input_scale=1e39)),
        (TypeError, "input_scale must be a Python or numpy number", dict(input_scale=torch.tensor(0.5))),
        (TypeError, "input_shift must be a Python or numpy number", dict(input_shift=True)),
        (TypeError, "dequantize must be a bool", dict(dequantize=1)),
    ]


@pytest.mark.parametrize("k", range(12))
@pytest.mark.parametrize("backend", ["reference", "torch", "cpu"])
def test_refusals_write_nothing_and_move_no_generator(k, backend):
    if backend == "cpu":
        backend_or_skip("cpu")
    x, cases = _refusals()
    err, msg, kw = cases[k]
    x0 = x.clone()
    out = kw.get("out")
    before = None if out is None else out.clone()
    g = mf.Generator(3, 10)
    with pytest.raises(err, match=msg):
        mf.mollify(x, 0.1, generator=g, dequantize=kw.pop("dequantize", True), backend=backend, **kw)
    assert g.offset == 10
    assert torch.equal(x, x0)
    if before is not None:
        assert torch.equal(out, before)


def test_other_integer_dtypes_are_refused():
    for dt in (torch.int8, torch.int32, torch.int64, torch.bool):
        with pytest.raises(TypeError, match="uint8, float16, bfloat16, float32 or float64"):
            mf.mollify(torch.zeros(2, 3, dtype=dt), 0.1)


def test_float64_out_lifts_the_float32_limit():
    x = _images((2, 4))
    out = mf.mollify(x, 0.0, alpha=1.0, input_scale=1e39, out_dtype=torch.float64, backend="reference")
    assert torch.equal(out, x.double() * 1e39)


def test_uint8_x_cannot_require_grad():
    with pytest.raises(RuntimeError):
        torch.zeros(2, 3, dtype=torch.uint8).requires_grad_()


# ---- torch.compile and the custom ops ----

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compiled_inductor_fullgraph_equals_eager(backend):
    backend_or_skip(backend)
    torch._dynamo.reset()

    def step(x, g):
        return mf.mollify(x, 0.3, alpha=0.9, generator=g, blur_sigma=0.7, input_scale=2 / 255, input_shift=-1.0,
                          dequantize=True, return_noise=True, backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    x = _images((2, 3, 8, 8))
    g1, g2 = mf.Generator(21), mf.Generator(21)
    for _ in range(2):
        want, want_eps = step(x, g1)
        got, got_eps = compiled(x, g2)
        assert got.dtype == torch.float32 and got_eps.dtype == torch.float32
        assert torch.equal(got, want) and torch.equal(got_eps, want_eps)
        assert g1.offset == g2.offset
    assert g2.offset == 2 * 2 * _groups(x.numel())


def test_fake_implementations_give_the_output_dtype():
    x = torch.empty(2, 3, 8, 8, dtype=torch.uint8, device="meta")
    out, eps = mf.mollify(x, 0.3, return_noise=True, out_dtype=torch.bfloat16)
    assert out.dtype == eps.dtype == torch.bfloat16 and out.is_meta
    out = mf.mollify(x, 0.3)
    assert out.dtype == torch.float32
    o = torch.empty(2, 3, 8, 8, dtype=torch.float16, device="meta")
    assert mf.mollify(x, 0.3, out=o, out_dtype=torch.float16) is o


def test_opcheck_with_the_input_map():
    x = _images((3, 2, 6, 5))
    g = mf.Generator(1)
    args = Call(x, 0.3, alpha=0.9, blur_sigma=1.0, stream=g._state.clone(), backend="reference", input_scale=2 / 255,
                input_shift=-1.0, dequantize=True, out_dtype=torch.float32, return_noise=True).op_args()
    torch.library.opcheck(torch.ops.mollify_fast.mollify.default, args)


# ---- Mollifier: the map at construction, and past the window ----

MAP = dict(input_scale=2 / 255, input_shift=-1.0, dequantize=True)


def test_mollifier_passes_the_map_through():
    x = _images((4, 3, 8, 8))
    mol = mf.Mollifier(10, mode="noise+blur", blur_sigma_max=2.0, generator=mf.Generator(6), backend="reference",
                       **MAP)
    got = mol(x, 3)
    sigma = math.sqrt(mol.gamma(3))
    want = mf.mollify(x, sigma, blur_sigma=2.0 * sigma, generator=mf.Generator(6), backend="reference", **MAP)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert mol.generator.offset == 2 * _groups(x.numel())


def test_mollifier_past_the_window_applies_the_map_alone():
    x = _images((4, 3, 8, 8))
    mol = mf.Mollifier(10, mode="blur", blur_sigma_max=2.0, generator=mf.Generator(6), backend="reference",
                       out_dtype=torch.float64, **MAP)
    got = mol(x, 10)
    want = reference.mollify(x, 0.0, alpha=1.0, seed=6, offset=0, out_dtype=torch.float64, **MAP)
    assert got.dtype == torch.float64 and torch.equal(got, want)
    y = (got + 1) * 127.5 - x.double()  # (x + u) * 2/255 - 1 in float64: u in [0, 1)
    assert bool(((y >= -1e-9) & (y < 1)).all())
    # A uint8 x without any settings still becomes floats (x / 255); a float x is returned as is.
    plain = mf.Mollifier(10, backend="reference")
    out = plain(x, 12)
    assert out.dtype == torch.float32 and torch.equal(out, x.float() * torch.tensor(1 / 255))
    xf = torch.randn(2, 3)
    assert plain(xf, 12) is xf


def test_mollifier_state_dict_round_trips_with_a_map():
    x = _images((2, 3, 6, 6))
    a = mf.Mollifier(5, generator=mf.Generator(2), backend="reference", **MAP)
    a(x, 0)
    sd = a.state_dict()
    b = mf.Mollifier(5, generator=mf.Generator(99), backend="reference", **MAP)
    b.load_state_dict(sd)
    assert b.state_dict() == sd
    assert torch.equal(a(x, 1), b(x, 1))
    assert torch.equal(a(x, 7), b(x, 7))  # past the window: the map, from the same stream


@pytest.mark.parametrize("kw,err", [(dict(dequantize=1), TypeError), (dict(out_dtype=torch.int8), TypeError),
                                    (dict(input_scale=float("nan")), ValueError),
                                    (dict(input_shift=torch.tensor(1.0)), TypeError)])
def test_mollifier_refuses_a_bad_map(kw, err):
    with pytest.raises(err):
        mf.Mollifier(5, **kw)


def test_bench_uint8_quick_writes_its_csv(tmp_path):
    import csv

    from benchmarks.micro import bench_uint8

    assert bench_uint8.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "uint8_cpu.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["provider"] for r in rows} == {"eager", "fused"}
    by = {r["provider"]: r for r in rows}
    assert int(by["fused"]["bytes_per_element"]) == 5
    assert int(by["eager"]["bytes_per_element"]) == sum(bench_uint8.EAGER_PASSES.values()) > 5
    assert float(by["eager"]["ratio_vs_eager"]) == 1.0 and float(by["fused"]["p50"]) > 0


def test_cpu_mapped_kernel_same_bits_on_every_instruction_set():
    backend_or_skip("cpu")
    from mollify_fast import _C

    x = _images((6, 3, 17, 13))[:, :, ::2]  # strided: the scalar loop; contiguous below: the vector loop
    kw = dict(generator=None, dequantize=True, input_scale=2 / 255, input_shift=-1.0, return_noise=True)
    sigma = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    results = {}
    try:
        for isa in _C.cpu_isas():
            _C.set_cpu_isa(isa)
            results[isa] = [mf.mollify(t, sigma, backend="cpu", **dict(kw, generator=mf.Generator(4)))
                            for t in (x, x.contiguous())]
    finally:
        _C.set_cpu_isa("auto")
    first = next(iter(results.values()))
    for isa, res in results.items():
        for (o, e), (o0, e0) in zip(res, first):
            assert torch.equal(o.view(torch.int32), o0.view(torch.int32)) and torch.equal(e, e0), isa
    assert torch.equal(first[0][0], first[1][0])  # the strided and the contiguous loop agree bit for bit


@pytest.mark.parametrize("backend", ["reference", "cpu", "torch"])
def test_in_place_with_a_map_equals_out_of_place(backend):
    backend_or_skip(backend)
    x = torch.randn(3, 4, 5, 6)
    kw = dict(alpha=0.5, input_scale=2.0, input_shift=-1.0, dequantize=True, backend=backend)
    want = mf.mollify(x, 0.3, generator=mf.Generator(9), **kw)
    y = x.clone()
    assert mf.mollify(y, 0.3, generator=mf.Generator(9), out=y, **kw) is y
    assert torch.equal(y, want)
    y = x.clone()
    mf.mollify(y, 0.3, generator=mf.Generator(9), out=y, blur_sigma=0.8, **kw)
    assert torch.equal(y, mf.mollify(x, 0.3, generator=mf.Generator(9), blur_sigma=0.8, **kw))


def test_vmap_merges_the_slices_with_the_map():
    x = _images((2, 3, 4, 5))
    kw = dict(dequantize=True, input_scale=2 / 255, input_shift=-1.0, backend="reference")
    g = mf.Generator(12)
    got = torch.func.vmap(lambda t: mf.mollify(t, 0.2, generator=g, **kw), randomness="different")(x)
    want = mf.mollify(x.reshape(6, 4, 5), 0.2, generator=mf.Generator(12), **kw).reshape(x.shape)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert g.offset == 2 * _groups(x.numel())

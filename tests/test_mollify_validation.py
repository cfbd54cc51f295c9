"""CONTRACT section 7: every misuse raises a named, actionable error and writes nothing."""
import pytest
import torch

import mollify_fast as mf


def _x():
    return torch.randn(4, 3, 6, 5)


# (case id, kwargs builder, exception type, words the message must contain)
CASES = [
    ("int dtype", lambda x: dict(x=x.to(torch.int32), sigma=0.5), TypeError, ["x", "float"]),
    ("bool dtype", lambda x: dict(x=x > 0, sigma=0.5), TypeError, ["x", "float"]),
    ("complex dtype", lambda x: dict(x=x.to(torch.complex64), sigma=0.5), TypeError, ["x"]),
    ("0-d x", lambda x: dict(x=x[0, 0, 0, 0], sigma=0.5), ValueError, ["x", "1 dim"]),
    ("not a tensor", lambda x: dict(x=[1.0, 2.0], sigma=0.5), TypeError, ["x", "Tensor"]),
    ("sigma < 0", lambda x: dict(x=x, sigma=-0.1), ValueError, ["sigma", ">= 0"]),
    ("sigma > 1 vp", lambda x: dict(x=x, sigma=1.5), ValueError, ["sigma", "alpha"]),
    ("sigma nan", lambda x: dict(x=x, sigma=float("nan")), ValueError, ["sigma", "finite"]),
    ("sigma inf", lambda x: dict(x=x, sigma=float("inf"), alpha=1.0), ValueError, ["sigma", "finite"]),
    ("sigma string", lambda x: dict(x=x, sigma="0.5"), TypeError, ["sigma"]),
    ("sigma tensor < 0", lambda x: dict(x=x, sigma=torch.tensor([0.1, -0.2, 0.3, 0.4])), ValueError, ["sigma", ">= 0"]),
    ("sigma tensor > 1 vp", lambda x: dict(x=x, sigma=torch.tensor([0.1, 1.2, 0.3, 0.4])), ValueError, ["sigma", "alpha"]),
    ("sigma tensor nan", lambda x: dict(x=x, sigma=torch.tensor([0.1, float("nan"), 0.3, 0.4])), ValueError, ["sigma", "finite"]),
    ("sigma wrong length", lambda x: dict(x=x, sigma=torch.rand(3)), ValueError, ["sigma", "length", "4"]),
    ("sigma wrong rank", lambda x: dict(x=x, sigma=torch.rand(4, 1)), ValueError, ["sigma", "2-D"]),
    ("sigma complex", lambda x: dict(x=x, sigma=torch.rand(4, dtype=torch.complex64)), TypeError, ["sigma"]),
    ("alpha nan", lambda x: dict(x=x, sigma=0.5, alpha=float("nan")), ValueError, ["alpha", "finite"]),
    ("alpha tensor inf", lambda x: dict(x=x, sigma=0.5, alpha=torch.tensor([1.0, float("inf"), 1, 1])), ValueError, ["alpha", "finite"]),
    ("alpha wrong length", lambda x: dict(x=x, sigma=0.5, alpha=torch.ones(5)), ValueError, ["alpha", "length"]),
    ("blur_sigma < 0", lambda x: dict(x=x, sigma=0.5, blur_sigma=-1.0), ValueError, ["blur_sigma", ">= 0"]),
    ("blur_sigma tensor < 0", lambda x: dict(x=x, sigma=0.5, blur_sigma=torch.tensor([1.0, -1.0, 1, 1])), ValueError, ["blur_sigma"]),
    ("blur_sigma nan", lambda x: dict(x=x, sigma=0.5, blur_sigma=float("nan")), ValueError, ["blur_sigma", "finite"]),
    ("blur_sigma wrong length", lambda x: dict(x=x, sigma=0.5, blur_sigma=torch.ones(2)), ValueError, ["blur_sigma", "length"]),
    ("blur_radius < 0", lambda x: dict(x=x, sigma=0.5, blur_sigma=1.0, blur_radius=-1), ValueError, ["blur_radius", ">= 0"]),
    ("blur_radius float", lambda x: dict(x=x, sigma=0.5, blur_sigma=1.0, blur_radius=1.5), TypeError, ["blur_radius", "int"]),
    ("blur_radius alone", lambda x: dict(x=x, sigma=0.5, blur_radius=2), ValueError, ["blur_radius", "blur_sigma"]),
    ("blur on 1-D", lambda x: dict(x=x.reshape(-1), sigma=0.5, blur_sigma=1.0), ValueError, ["blur", "2 dims"]),
    ("per-row blur on 2-D", lambda x: dict(x=x[0, 0], sigma=0.5, blur_sigma=torch.ones(6)), ValueError, ["blur_sigma", "plane"]),
    ("unknown backend", lambda x: dict(x=x, sigma=0.5, backend="fast"), ValueError, ["backend", "'fast'", "torch"]),
    ("torch.Generator", lambda x: dict(x=x, sigma=0.5, generator=torch.Generator()), TypeError, ["generator", "mollify_fast.Generator"]),
    ("return_noise not bool", lambda x: dict(x=x, sigma=0.5, return_noise=1), TypeError, ["return_noise"]),
    ("requires grad", lambda x: dict(x=x.clone().requires_grad_(), sigma=0.5), RuntimeError, ["x", "x.detach()"]),
]


@pytest.mark.parametrize("case,build,exc,words", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_bad_input_raises_and_writes_nothing(case, build, exc, words, backend):
    x = _x()
    kw = build(x)
    kw.setdefault("backend", backend)
    src = kw["x"]
    before = src.detach().clone() if torch.is_tensor(src) else None
    out = torch.full(src.shape, 7.0, dtype=src.dtype) if torch.is_tensor(src) and src.dtype.is_floating_point else None
    g = mf.Generator(5, offset=3)
    with pytest.raises(exc) as info:
        xx = kw.pop("x")
        mf.mollify(xx, kw.pop("sigma"), generator=kw.pop("generator", g), out=out, **kw)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"message {msg!r} should mention {w!r}"
    if before is not None:
        assert torch.equal(src.detach(), before), "x was modified"
    if out is not None:
        assert (out == 7.0).all(), "out was written"
    assert g.offset == 3, "the generator advanced on a failed call"


OUT_CASES = [
    # Filled, not torch.empty: uninitialised memory can hold NaN, which never compares equal.
    ("out wrong shape", lambda x: torch.full((4, 3, 6, 4), 7.0), ValueError, ["out", "shape"]),
    ("out wrong dtype", lambda x: torch.full((4, 3, 6, 5), 7.0, dtype=torch.float64), TypeError, ["out", "dtype"]),
    ("out not tensor", lambda x: [0.0], TypeError, ["out"]),
    ("out partial overlap", lambda x: None, ValueError, ["out", "overlap"]),
    ("out expanded", lambda x: torch.zeros(1, 3, 6, 5).expand(4, 3, 6, 5), ValueError, ["out", "overlapping"]),
    ("out requires grad", lambda x: torch.zeros(4, 3, 6, 5, requires_grad=True), RuntimeError, ["out", "detach"]),
]


@pytest.mark.parametrize("case,build,exc,words", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_bad_out(case, build, exc, words):
    if case == "out partial overlap":
        buf = torch.randn(5, 3, 6, 5)
        x, out = buf[:4], buf[1:]
    else:
        x = _x()
        out = build(x)
    before = x.clone()
    out_before = out.detach().clone() if torch.is_tensor(out) else None
    with pytest.raises(exc) as info:
        mf.mollify(x, 0.5, out=out, backend="torch")
    for w in words:
        assert w in str(info.value)
    assert torch.equal(x, before)
    if out_before is not None:
        assert torch.equal(out.detach(), out_before)


def test_unavailable_backend_says_why():
    # "cuda" cannot run a CPU tensor on any machine: either it is not built, or there is no GPU,
    # or the tensor is on the CPU; each says so.
    x = _x()
    with pytest.raises(mf.BackendUnavailableError) as info:
        mf.mollify(x, 0.5, backend="cuda")
    assert "cuda" in str(info.value) and ("unavailable" in str(info.value) or "cannot run" in str(info.value))


def test_param_on_other_gpu_is_refused():
    if torch.cuda.device_count() < 1:
        pytest.skip("needs a CUDA device")
    x = _x()  # on the CPU: a CUDA sigma is on another device
    with pytest.raises(ValueError, match="sigma"):
        mf.mollify(x, torch.rand(4, device="cuda"))


def test_generator_validation():
    with pytest.raises(ValueError, match="seed"):
        mf.Generator(-1)
    with pytest.raises(ValueError, match="offset"):
        mf.Generator(0, offset=2**64)
    with pytest.raises(TypeError, match="seed"):
        mf.Generator(1.5)
    with pytest.raises(ValueError, match="keys"):
        mf.Generator(0).load_state_dict({"seed": 1})

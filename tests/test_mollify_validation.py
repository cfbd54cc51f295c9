"""README, "Errors and limits, in one place": every misuse raises a named, actionable error and writes nothing."""
import os

import numpy as np
import pytest
import torch

import mollify_fast as mf
from mollify_fast._validate import MAX_BLUR_RADIUS as MAX_R

from conftest import backend_or_skip

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


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
    ("sigma wrong rank", lambda x: dict(x=x, sigma=torch.rand(4, 3)), ValueError, ["sigma", "2-D", "[N, 1, ..., 1]"]),
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
    ("blur on 1-D", lambda x: dict(x=x.reshape(-1), sigma=0.5, blur_sigma=1.0), ValueError, ["blur", "3 dims", "x[None]"]),
    # dim 0 is the batch: a 2-D [N, D] batch is not an image (blurring it would mix samples)
    ("blur on 2-D", lambda x: dict(x=x[0, 0], sigma=0.5, blur_sigma=1.0), ValueError, ["blur", "3 dims", "x[None]"]),
    ("per-row blur on 2-D", lambda x: dict(x=x[0, 0], sigma=0.5, blur_sigma=torch.ones(6)), ValueError, ["blur", "x[None]"]),
    # per-sample shapes: [N] or [N, 1, ..., 1] up to x.dim(); anything else is refused
    ("sigma [N, 2, 1, 1]", lambda x: dict(x=x, sigma=torch.rand(4, 2, 1, 1)), ValueError, ["sigma", "[N, 1, ..., 1]"]),
    ("sigma rank > x.dim()", lambda x: dict(x=x, sigma=torch.rand(4, 1, 1, 1, 1)), ValueError, ["sigma", "rank", "4"]),
    ("sigma [1] for N=4", lambda x: dict(x=x, sigma=torch.rand(1)), ValueError, ["sigma", "length", "4"]),
    ("sigma [1, 4]", lambda x: dict(x=x, sigma=torch.rand(1, 4)), ValueError, ["sigma", "[N, 1, ..., 1]"]),
    ("sigma numpy wrong length", lambda x: dict(x=x, sigma=np.full(3, 0.5, np.float32)), ValueError, ["sigma", "length"]),
    ("sigma numpy string", lambda x: dict(x=x, sigma=np.str_("0.5")), TypeError, ["sigma"]),
    # numbers at the edges
    ("sigma 10**400", lambda x: dict(x=x, sigma=10**400, alpha=1.0), ValueError, ["sigma", "finite"]),
    ("sigma 1e39 float32", lambda x: dict(x=x, sigma=1e39, alpha=1.0), ValueError, ["sigma", "float32"]),
    ("alpha 1e39 float32", lambda x: dict(x=x, sigma=0.5, alpha=-1e39), ValueError, ["alpha", "float32"]),
    ("alpha tensor 1e39 float32", lambda x: dict(x=x, sigma=0.5, alpha=torch.tensor([1.0, 1e39, 1, 1], dtype=torch.float64)),
     ValueError, ["alpha", "float32"]),
    ("blur_sigma 1e39", lambda x: dict(x=x, sigma=0.5, blur_sigma=1e39), ValueError, ["blur_sigma"]),
    # radius limit: refused before any stream is taken, never a pybind11 TypeError
    ("blur_sigma 1e9", lambda x: dict(x=x, sigma=0.5, blur_sigma=1e9), ValueError, ["blur", "radius", str(MAX_R)]),
    ("blur_sigma tensor 1e9", lambda x: dict(x=x, sigma=0.5, blur_sigma=torch.tensor([1.0, 1e9, 1, 1])), ValueError,
     ["blur", "radius", str(MAX_R)]),
    ("blur_radius > limit", lambda x: dict(x=x, sigma=0.5, blur_sigma=1.0, blur_radius=MAX_R + 1), ValueError,
     ["blur_radius", str(MAX_R)]),
    ("blur_radius 2**40", lambda x: dict(x=x, sigma=0.5, blur_sigma=1.0, blur_radius=2**40), ValueError,
     ["blur_radius", str(MAX_R)]),
    ("unknown backend", lambda x: dict(x=x, sigma=0.5, backend="fast"), ValueError, ["backend", "'fast'", "torch"]),
    ("torch.Generator", lambda x: dict(x=x, sigma=0.5, generator=torch.Generator()), TypeError, ["generator", "mollify_fast.Generator"]),
    ("return_noise not bool", lambda x: dict(x=x, sigma=0.5, return_noise=1), TypeError, ["return_noise"]),
    ("requires grad", lambda x: dict(x=x.clone().requires_grad_(), sigma=0.5), RuntimeError, ["x", "x.detach()"]),
]


@pytest.mark.parametrize("case,build,exc,words", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", ["torch", "reference", "cpu", "triton", "auto"])
def test_bad_input_raises_and_writes_nothing(case, build, exc, words, backend):
    """Refused before anything is written or the generator advances, on every backend that
    runs here (triton: under the interpreter)."""
    if backend != "auto":
        backend_or_skip(backend)
    if backend == "triton" and not INTERPRET:
        pytest.skip("the triton backend runs CPU tensors only under TRITON_INTERPRET=1")
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
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_bad_out(case, build, exc, words, backend):
    backend_or_skip(backend)
    if case == "out partial overlap":
        buf = torch.randn(5, 3, 6, 5)
        x, out = buf[:4], buf[1:]
    else:
        x = _x()
        out = build(x)
    before = x.clone()
    out_before = out.detach().clone() if torch.is_tensor(out) else None
    g = mf.Generator(1, offset=9)
    with pytest.raises(exc) as info:
        mf.mollify(x, 0.5, out=out, generator=g, backend=backend)
    for w in words:
        assert w in str(info.value)
    assert torch.equal(x, before)
    if out_before is not None:
        assert torch.equal(out.detach(), out_before)
    assert g.offset == 9, "the generator advanced on a refused call"


@pytest.mark.parametrize("backend", ["torch", "cpu", "reference"])
def test_interleaved_views_are_not_overlapping(backend):
    """x = buf[0::2], out = buf[1::2] share no element: accepted, and equal to the
    out-of-place result; a real partial overlap (buf[:4] vs buf[1:]) is still refused."""
    backend_or_skip(backend)
    buf = torch.randn(8, 3, 5, 4)
    x, out = buf[0::2], buf[1::2]
    # the same call into a separate buffer of out's layout (the torch backend's draw depends on it)
    want = mf.mollify(x.clone(), 0.5, blur_sigma=0.8, generator=mf.Generator(2), out=torch.empty_like(buf)[1::2],
                      backend=backend)
    r = mf.mollify(x, 0.5, blur_sigma=0.8, generator=mf.Generator(2), out=out, backend=backend)
    assert r is out and torch.equal(out, want)
    # interleaved along the last dim (strides (.., 2)) and along a middle dim
    buf = torch.randn(4, 3, 5, 8)
    mf.mollify(buf[..., 0::2], 0.5, out=buf[..., 1::2], backend=backend)
    buf = torch.randn(4, 6, 5, 4)
    mf.mollify(buf[:, 1::2], 0.5, out=buf[:, 0::2], backend=backend)
    # rows 0, 2, 4, 6, 8 against rows 4..8: rows 4, 6, 8 are shared, so refused
    buf = torch.randn(10, 4)
    before = buf.clone()
    with pytest.raises(ValueError, match="overlap"):
        mf.mollify(buf[0::2], 0.5, out=buf[4:9], backend=backend)
    assert torch.equal(buf, before)


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

"""Issue 13.3: ``mollify`` under ``torch.compile(fullgraph=True)`` with Python numbers that
change every call: no crash, no recompile per value, and the contract's value checks still
refuse bad numbers (inside the custom op, which runs with the real values)."""
import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import mollify_fast as mf


def _compiled(fn):
    torch._dynamo.reset()
    cnt = CompileCounter()
    return torch.compile(fn, fullgraph=True, backend=cnt), cnt


def test_changing_float_sigma_compiles_once():
    """Before: the second distinct float raised (math.isfinite on a SymFloat)."""
    f, cnt = _compiled(lambda x, s, g: mf.mollify(x, s, generator=g, backend="torch"))
    x = torch.zeros(4, 3, 5, 5)
    counts = []
    for s in [0.1, 0.25, 0.5, 0.75, 0.9, 0.3, 0.6]:
        g = mf.Generator(3)
        y = f(x, s, g)
        # alpha * 0 + s * eps with the same stream: exactly s times the s = 1 draw
        eps = mf.mollify(x, 1.0, generator=mf.Generator(3), backend="torch")
        assert torch.allclose(y, s * eps, rtol=1e-6, atol=0), s
        counts.append(cnt.frame_count)
    # Dynamo compiles the first call with every number constant and recompiles once with the
    # number made dynamic (automatic dynamic); after that no value may cost a compile.
    assert counts[-1] <= 2 and counts[1:] == [counts[1]] * (len(counts) - 1), f"compiles after each call: {counts}"


def test_changing_alpha_and_blur_sigma_compile_once():
    def step(x, s, a, b):
        return mf.mollify(x, s, alpha=a, blur_sigma=b, generator=mf.Generator(1), backend="reference")

    f, cnt = _compiled(step)
    x = torch.rand(2, 1, 6, 5)
    for s, a, b in [(0.1, 1.0, 0.5), (0.3, 0.7, 1.5), (2.0, -1.5, 0.9), (0.0, 3.0, 0.0), (0.5, 0.5, 2.5)]:
        assert torch.equal(f(x, s, a, b), step(x, s, a, b))
    assert cnt.frame_count <= 2, f"{cnt.frame_count} compiles for 5 values"


@pytest.mark.parametrize(
    "s,a,b,words",
    [
        (-0.5, None, None, ["sigma", ">= 0"]),
        (1.5, None, None, ["sigma", "alpha"]),
        (math.nan, 1.0, None, ["sigma", "finite"]),
        (0.5, math.inf, None, ["alpha", "finite"]),
        (0.5, 1e39, None, ["alpha", "float32"]),
        (0.5, None, -1.0, ["blur_sigma", ">= 0"]),
        (0.5, None, 1e9, ["blur", "radius"]),
    ],
)
def test_value_checks_still_refuse_in_compiled_mode(s, a, b, words):
    def step(x, s, a, b, g):
        return mf.mollify(x, s, alpha=a, blur_sigma=b, generator=g, backend="torch")

    torch._dynamo.reset()
    f = torch.compile(step, fullgraph=True)
    x = torch.rand(2, 1, 6, 5)
    f(x, 0.25, 1.0 if a is not None else None, 0.5 if b is not None else None, mf.Generator(0))  # warm: good values
    g = mf.Generator(7, 2)
    with pytest.raises(Exception) as info:
        f(x, s, a, b, g)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg
    assert g.offset == 2


def test_opcheck_with_python_numbers_still_passes():
    x = torch.randn(3, 2, 6, 5)
    g = mf.Generator(1)
    # (x, sigma, sigma_t, alpha, alpha_t, vp, blur, blur_t, has_blur, blur_radius, gen_state, return_noise, backend)
    args = (x, 0.3, None, 0.9, None, False, 40.0, None, True, -1, g._state.clone(), True, "torch")
    torch.library.opcheck(torch.ops.mollify_fast.mollify.default, args)

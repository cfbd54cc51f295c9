"""``mollify`` under ``torch.compile(fullgraph=True)`` with Python numbers that change every
call: no crash, at most 2 compiles (inductor, the default backend, and aot_eager; measured here
on CPU), none for tensors, and the value checks still refuse bad numbers (inside the custom op,
which runs with the real values)."""
import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import mollify_fast as mf
from mollify_fast._call import Call

# More distinct values than Dynamo's recompile limit (8): a per-value recompile fails the
# fullgraph step at the 9th.
_SIGMAS = [0.1, 0.25, 0.5, 0.75, 0.9, 0.3, 0.6, 0.2, 0.15, 0.35]


def _compiled(fn, backend):
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend(backend)
    return torch.compile(fn, fullgraph=True, backend=cnt), cnt


@pytest.mark.parametrize("compiler", ["inductor", "aot_eager"])
def test_changing_float_sigma_compiles_at_most_twice(compiler):
    """Before: ``torch.full((), sigma)`` made Dynamo specialise the float: one compile per
    value, FailOnRecompileLimitHit at the 9th."""
    f, cnt = _compiled(lambda x, s, g: mf.mollify(x, s, generator=g, backend="torch"), compiler)
    x = torch.zeros(2, 3, 4)
    eps = mf.mollify(x, 1.0, generator=mf.Generator(3), backend="torch")
    counts = []
    for s in _SIGMAS:
        y = f(x, s, mf.Generator(3))
        # alpha * 0 + s * eps with the same stream: s times the s = 1 draw, to float32 rounding
        torch.testing.assert_close(y, s * eps, rtol=1.2e-7, atol=0)
        counts.append(cnt.frame_count)
    # The first call compiles with the number constant, the second recompiles with it dynamic
    # (automatic dynamic); after that no value may cost a compile.
    assert counts[-1] <= 2 and counts[1:] == [counts[1]] * (len(counts) - 1), f"compiles after each call: {counts}"


@pytest.mark.parametrize("compiler", ["inductor", "aot_eager"])
def test_changing_alpha_and_blur_sigma_compile_at_most_twice(compiler):
    def step(x, s, a, b):
        return mf.mollify(x, s, alpha=a, blur_sigma=b, generator=mf.Generator(1), backend="reference")

    f, cnt = _compiled(step, compiler)
    x = torch.rand(2, 1, 6, 5)
    values = [(0.1 * i, 1.0 - 0.3 * i, 0.2 + 0.25 * i) for i in range(10)]
    for s, a, b in values:
        assert torch.equal(f(x, s, a, b), step(x, s, a, b)), (s, a, b)
    assert cnt.frame_count <= 2, f"{cnt.frame_count} compiles for {len(values)} values"


def test_changing_tensor_parameters_compile_once():
    def step(x, s, a, b, g):
        return mf.mollify(x, s, alpha=a, blur_sigma=b, generator=g, backend="torch")

    f, cnt = _compiled(step, "inductor")
    x = torch.rand(2, 1, 6, 5)
    counts = []
    for i in range(4):
        s, a, b = torch.tensor(0.1 * i), torch.rand(2), torch.tensor(0.5 + i, dtype=torch.float64)
        assert torch.equal(f(x, s, a, b, mf.Generator(i)), step(x, s, a, b, mf.Generator(i)))
        counts.append(cnt.frame_count)
    # The first call compiles (inductor on CPU counts 2 graphs for it: Dynamo restarts the
    # analysis once); a new value is never a recompile.
    assert counts == [counts[0]] * 4 and counts[0] <= 2, f"compiles after each call: {counts}"


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
    args = Call(x, 0.3, alpha=0.9, blur_sigma=40.0, stream=g._state.clone(), backend="torch",
                return_noise=True).op_args()
    torch.library.opcheck(torch.ops.mollify_fast.mollify.default, args)

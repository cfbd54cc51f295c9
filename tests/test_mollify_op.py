"""README, "The contract, in short" (the op): the custom op (opcheck, torch.compile) and ``python -m mollify_fast info``."""
import math
import subprocess
import sys

import pytest
import torch

import mollify_fast as mf
from mollify_fast._call import Call
from conftest import SUBPROCESS_LIMIT_S  # noqa: E402


def _args(x, g, *, sigma=0.3, blur_sigma=None, return_noise=True, backend="torch"):
    return Call(x, sigma, blur_sigma=blur_sigma, stream=g._state.clone(), backend=backend,
                return_noise=return_noise).op_args()


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("variant", ["noise", "blur", "per_sample"])
def test_opcheck_functional(backend, variant):
    x = torch.randn(4, 3, 8, 8)
    g = mf.Generator(1)
    kw = {"noise": {}, "blur": dict(blur_sigma=1.0), "per_sample": dict(sigma=torch.rand(4))}[variant]
    torch.library.opcheck(torch.ops.mollify_fast.mollify.default, _args(x, g, backend=backend, **kw))


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_opcheck_out_variant(backend):
    x = torch.randn(4, 3, 8, 8)
    g = mf.Generator(2)
    out = torch.empty_like(x)
    noise = torch.empty_like(x)
    args = Call(x, 0.3, blur_sigma=1.0, stream=g._state.clone(), backend=backend, out=out, noise=noise).out_op_args(False)
    torch.library.opcheck(torch.ops.mollify_fast.mollify_out.default, args)
    # in-place form: x=None
    y = x.clone()
    args = Call(y, 0.3, stream=g._state.clone(), backend=backend, out=y).out_op_args(True)
    torch.library.opcheck(torch.ops.mollify_fast.mollify_out.default, args)


def test_compile_fullgraph_training_step():
    """A training step that calls mollify compiles with no graph break and gives N(0,1) noise."""
    torch._dynamo.reset()
    lin = torch.nn.Linear(64, 64)

    def step(x):
        y = mf.mollify(x, 0.8)
        return lin(y).sum(), y

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    x = torch.zeros(512, 64)
    loss, y = compiled(x)
    assert y.shape == x.shape and y.dtype == x.dtype and not y.requires_grad
    assert loss.shape == ()
    # alpha * 0 + 0.8 * eps: std 0.8 within 5 standard errors of the sample std.
    n = y.numel()
    assert abs(y.std().item() - 0.8) < 5 * 0.8 / math.sqrt(2 * n)
    assert abs(y.mean().item()) < 5 * 0.8 / math.sqrt(n)
    # Calls differ (fresh seed each call) and the graph is reused.
    _, y2 = compiled(x)
    assert not torch.equal(y, y2)


def test_compile_with_generator_and_per_sample_params():
    torch._dynamo.reset()
    g_eager, g_comp = mf.Generator(5), mf.Generator(5)
    x = torch.randn(8, 3, 6, 6)
    sig = torch.rand(8)

    def f(x, sig, g):
        return mf.mollify(x, sig, blur_sigma=0.8, generator=g, backend="reference")

    compiled = torch.compile(f, fullgraph=True)
    for _ in range(2):
        assert torch.equal(compiled(x, sig, g_comp), f(x, sig, g_eager))
    assert g_comp.state_dict() == g_eager.state_dict()


def test_info_cli():
    r = subprocess.run([sys.executable, "-m", "mollify_fast", "info"], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S)
    assert r.returncode == 0, r.stderr
    for word in ("mollify_fast", "torch", "triton", "torch ", "cpu", "cuda", "auto order"):
        assert word in r.stdout
    from mollify_fast.backends import BACKENDS

    for name in BACKENDS:
        assert any(line.split()[:1] == [name] and "available" in line for line in r.stdout.splitlines()), name


def _run_py(code: str) -> str:
    env = dict(__import__("os").environ)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_works_without_the_extension():
    """A missing or failed build: the package still works through torch, and says why."""
    out = _run_py(
        "import sys; sys.modules['mollify_fast._C'] = None\n"
        "import torch, mollify_fast as mf\n"
        "y = mf.mollify(torch.randn(4, 4), 0.5)\n"
        "print(mf.last_backend()); print(mf.available_backends()['cpu'][1])\n"
        "from mollify_fast.__main__ import info; print(info())\n"
    )
    lines = out.splitlines()
    assert lines[0] == "torch"
    assert "extension" in lines[1]
    assert any(line.split()[:2] == ["cpu", "unavailable:"] for line in lines)


def test_import_does_not_need_triton():
    out = _run_py(
        "import sys; sys.modules['triton'] = None\n"
        "import torch, mollify_fast as mf\n"
        "y = mf.mollify(torch.randn(4, 4), 0.5)\n"
        "ok, why = mf.available_backends()['triton']; print(ok); print(why)\n"
        "print('triton' in sys.modules and sys.modules['triton'] is not None)\n"
    )
    ok, why, imported = out.splitlines()[:3]
    assert ok == "False" and "triton" in why.lower() and imported == "False"

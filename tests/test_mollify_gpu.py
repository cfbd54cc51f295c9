"""GPU checks (README, "The contract, in short": the op, the noise stream and the blur on a real device). Every test skips cleanly without a
CUDA device; nothing here touches CUDA at import or collection.

Run on a GPU machine with ``TRITON_INTERPRET=0 pytest tests/test_mollify_gpu.py``.
"""
import math

import pytest
import torch
from scipy import stats

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import assert_parity

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["triton", "cuda"]


def _need(backend):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ok, why = mf.available_backends()[backend]
    if not ok:
        pytest.skip(f"backend {backend} unavailable: {why}")


def _oracle(x_cpu, sigma, seed, offset, **kw):
    """The cpu backend when built (checked against the reference in CI), else the reference."""
    name = "cpu" if mf.available_backends()["cpu"][0] else "reference"
    return mf.mollify(x_cpu, sigma, generator=mf.Generator(seed, offset), return_noise=True, backend=name, **kw)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(256, 3, 32, 32), (64, 3, 256, 256), (7, 3, 97, 1025)])
def test_parity_realistic_sizes(backend, dtype, shape):
    _need(backend)
    x = torch.randn(shape).to(dtype)
    sig = torch.rand(shape[0])
    out, noise = mf.mollify(x.cuda(), sig.cuda(), generator=mf.Generator(5, 2**33), return_noise=True, backend=backend)
    want, want_noise = _oracle(x, sig, 5, 2**33)
    assert_parity(noise.cpu(), want_noise, "noise")
    assert_parity(out.cpu(), want, "out")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("blur_sigma", [1.0, 2.0, 40.0])
def test_blur_parity_realistic(backend, blur_sigma):
    _need(backend)
    x = torch.rand(16, 3, 64, 64)
    out = mf.mollify(x.cuda(), 0.3, blur_sigma=blur_sigma, generator=mf.Generator(3), backend=backend)
    want, _ = _oracle(x, 0.3, 3, 0, blur_sigma=blur_sigma)
    assert_parity(out.cpu(), want, "blur+noise")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bfloat16_channels_last(backend):
    _need(backend)
    x = torch.randn(32, 3, 64, 64).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    for kw in ({}, {"blur_sigma": 1.5}):
        out = mf.mollify(x.cuda(), 0.5, generator=mf.Generator(8), backend=backend, **kw)
        assert out.is_contiguous(memory_format=torch.channels_last)
        want, _ = _oracle(x, 0.5, 8, 0, **kw)
        assert_parity(out.cpu(), want, f"bf16 channels_last {kw}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_more_than_2_31_elements(backend):
    _need(backend)
    n = 2**31 + 1000
    if torch.cuda.get_device_properties(0).total_memory < 6 * n:
        pytest.skip("needs ~13 GB of GPU memory")
    x = torch.zeros(n, dtype=torch.float16, device="cuda")
    seed, offset = 11, 2**40
    out = mf.mollify(x, 1.0, alpha=0.0, generator=mf.Generator(seed, offset), backend=backend)
    for start in (0, 2**31 - 8, n - 16):
        want = R.normals(seed, offset + start // 4, 16).to(torch.float16)
        assert_parity(out[start:start + 16].cpu(), want, f"elements {start}..")
    del out, x


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_statistics_1e9_draws(backend):
    _need(backend)
    g = mf.Generator(2026)
    x = torch.zeros(10**8, device="cuda")
    total, s1, s2, mx = 0, 0.0, 0.0, 0.0
    for _ in range(10):
        _, eps = mf.mollify(x, 1.0, alpha=0.0, generator=g, return_noise=True, backend=backend)
        assert torch.isfinite(eps).all(), "NaN or inf in the draws"
        e = eps.double()
        total += e.numel()
        s1 += e.sum().item()
        s2 += (e * e).sum().item()
        mx = max(mx, e.abs().max().item())
    mean, var = s1 / total, s2 / total - (s1 / total) ** 2
    assert abs(mean) < 5 / math.sqrt(total) and abs(var - 1) < 5 * math.sqrt(2 / total)
    assert mx <= math.sqrt(-2 * math.log(1e-7)) + 1e-4
    p = stats.kstest(eps[: 10**6].cpu().numpy(), "norm").pvalue
    assert p > 1e-4


def test_triton_and_cuda_agree():
    _need("triton")
    _need("cuda")
    x = torch.randn(33, 3, 41, 37, device="cuda")
    for kw in ({}, {"blur_sigma": torch.rand(33, device="cuda") * 3}):
        a = mf.mollify(x, 0.4, generator=mf.Generator(1), backend="triton", **kw)
        b = mf.mollify(x, 0.4, generator=mf.Generator(1), backend="cuda", **kw)
        assert_parity(a.cpu(), b.cpu(), f"triton vs cuda {list(kw)}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_non_default_stream_and_device_index(backend):
    _need(backend)
    x = torch.randn(64, 3, 32, 32, device="cuda")
    want = mf.mollify(x, 0.5, generator=mf.Generator(4), backend=backend)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = mf.mollify(x, 0.5, generator=mf.Generator(4), backend=backend)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, want)
    if torch.cuda.device_count() > 1:
        x1 = x.to("cuda:1")
        got1 = mf.mollify(x1, 0.5, generator=mf.Generator(4), backend=backend)
        assert torch.equal(got1.cpu(), want.cpu())


def test_default_generator_reproducible_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.randn(8, 100, device="cuda")
    torch.manual_seed(0)
    a = mf.mollify(x, 0.5)
    torch.manual_seed(0)
    b = mf.mollify(x, 0.5)
    assert torch.equal(a, b)
    assert mf.last_backend() in ("triton", "cuda")


def test_compile_fullgraph_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch._dynamo.reset()
    f = torch.compile(lambda x, g: mf.mollify(x * 2, 0.5, generator=g), fullgraph=True)
    x = torch.randn(64, 3, 32, 32, device="cuda")
    a = f(x, mf.Generator(3))
    b = mf.mollify(x * 2, 0.5, generator=mf.Generator(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", GPU_BACKENDS + ["torch"])
@pytest.mark.parametrize("gen", ["generator", "default"])
def test_cuda_graph_capture_is_refused_before_anything_moves(backend, gen):
    """A captured call would replay its captured noise forever: refused during capture, with
    x unwritten and the generator where it was."""
    if backend != "torch":
        _need(backend)
    elif not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.rand(8, 3, 32, 32, device="cuda")
    before = x.clone()
    g = mf.Generator(3) if gen == "generator" else None
    state = g.state_dict() if g is not None else None
    mf.mollify(x, 0.3, generator=mf.Generator(0), backend=backend)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph is being captured"):
        with torch.cuda.graph(graph):
            mf.mollify(x, 0.3, generator=g, backend=backend, out=x)
    torch.cuda.synchronize()
    assert torch.equal(x, before)
    if g is not None:
        assert g.state_dict() == state

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


# ---- CUDA graphs (README, "CUDA graphs"): a device-resident stream, fresh noise per replay ----

def _warm_up(fn, n=2):
    """The torch.cuda.graph recipe: warm-up calls on a side stream before capturing."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(n):
            fn()
    torch.cuda.current_stream().wait_stream(s)


def _param(kind, n):
    if kind == "scalar":
        return 0.3
    if kind == "0d":
        return torch.tensor(0.3, device="cuda")
    return torch.linspace(0.1, 0.9, n, device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("param", ["scalar", "0d", "per_sample"])
@pytest.mark.parametrize("blur", [None, 1.0])
def test_graph_replay_k_draws_what_eager_call_k_draws(backend, param, blur):
    """A resident generator in a captured graph: replay k equals the k-th eager call of a host
    generator in the same state (tensor parameters read at each replay), and after the replays
    both generators are at the same offset (the host view read back from the device)."""
    _need(backend)
    x = torch.rand(8, 3, 32, 40, device="cuda")
    sigma = _param(param, x.shape[0])
    kw = {} if blur is None else {"blur_sigma": blur}
    g, ref = mf.Generator(3).to_device("cuda"), mf.Generator(3)
    _warm_up(lambda: mf.mollify(x, sigma, generator=g, backend=backend, **kw))
    for _ in range(2):
        mf.mollify(x, sigma, generator=ref, backend=backend, **kw)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mf.mollify(x, sigma, generator=g, backend=backend, **kw)
    assert g.state_dict() == ref.state_dict()  # the capture ran nothing
    for k in range(3):
        if torch.is_tensor(sigma):
            sigma.mul_(0.9)  # a tensor parameter: each replay reads its current values
        graph.replay()
        want = mf.mollify(x, sigma, generator=ref, backend=backend, **kw)
        assert_parity(out, want, f"replay {k}")
        assert not torch.equal(out, mf.mollify(x, sigma, generator=mf.Generator(3), backend=backend, **kw))
    assert g.state_dict() == ref.state_dict()
    assert g.offset == ref.offset


@pytest.mark.parametrize("backend", GPU_BACKENDS + ["torch"])
def test_graph_with_the_default_generator_draws_fresh_noise_each_replay(backend):
    from conftest import check_standard_normal

    if backend != "torch":
        _need(backend)
    elif not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.zeros(64, 3, 32, 32, device="cuda")
    _warm_up(lambda: mf.mollify(x, 1.0, alpha=1.0, backend=backend))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mf.mollify(x, 1.0, alpha=1.0, backend=backend)
    torch.manual_seed(0)
    graph.replay()
    a = out.clone()
    graph.replay()
    b = out.clone()
    torch.manual_seed(0)
    graph.replay()
    assert not torch.equal(a, b)  # a new key (PyTorch's graph-safe RNG) at every replay
    assert torch.equal(out, a)  # reproducible under torch.manual_seed
    check_standard_normal(a)


@pytest.mark.parametrize("case", ["host_generator", "reference_backend", "blur_tensor", "cpu_per_sample"])
def test_capture_refusals_write_nothing_and_move_nothing(case):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.rand(8, 3, 32, 32, device="cuda")
    before = x.clone()
    g = mf.Generator(3) if case == "host_generator" else mf.Generator(3).to_device("cuda")
    state = g.state_dict()
    kw = {"host_generator": {}, "reference_backend": {"backend": "reference"},
          "blur_tensor": {"blur_sigma": torch.ones(8, device="cuda")},
          "cpu_per_sample": {"alpha": torch.ones(8)}}[case]
    mf.mollify(x.clone(), 0.3, generator=mf.Generator(0).to_device("cuda"))  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph"):
        with torch.cuda.graph(graph):
            mf.mollify(x, 0.3, generator=g, out=x, **kw)
    torch.cuda.synchronize()
    assert torch.equal(x, before)
    assert g.state_dict() == state


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_compiled_cuda_graph_modes_keep_the_op_in_the_graph_and_anneal(mode):
    """A Mollifier moved with .cuda() (its stream device-resident) called with a tensor step in a
    step compiled with reduce-overhead / max-autotune: no cudagraph skip, fresh noise each step,
    the schedule computed from the step tensor, the generator where the eager run leaves it."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    m = mf.Mollifier(10, generator=mf.Generator(4)).cuda()
    assert m.generator.resident_device is not None
    ref = mf.Mollifier(10, generator=mf.Generator(4))
    step_fn = torch.compile(lambda x, s: m(x, s) * 1.0, mode=mode, fullgraph=True)
    x = torch.randn(32, 3, 16, 16, device="cuda")
    outs = []
    for step in range(6):
        out = step_fn(x, torch.tensor(step, device="cuda")).clone()
        assert_parity(out, ref(x, step), f"step {step}")
        outs.append(out)
    assert not torch.equal(outs[-1], outs[-2])
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert m.generator.offset == ref.generator.offset
    m.cpu()
    assert m.generator.resident_device is None and m.generator.state_dict() == ref.generator.state_dict()


def test_mollifier_in_a_captured_graph_anneals_with_a_step_tensor():
    """Eager torch.cuda.graph around a Mollifier: the step as a CUDA tensor is read on the
    device at each replay (the schedule computed there), the noise is fresh at each replay."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m = mf.Mollifier(10, generator=mf.Generator(5)).cuda()
    ref = mf.Mollifier(10, generator=mf.Generator(5))
    x = torch.randn(16, 3, 8, 8, device="cuda")
    step_t = torch.zeros((), dtype=torch.int64, device="cuda")
    _warm_up(lambda: m(x, step_t))
    ref(x, 0)
    ref(x, 0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = m(x, step_t)
    for step in (1, 2, 5, 9, 12):
        step_t.fill_(step)
        graph.replay()
        assert_parity(out, ref(x, step) if step < 10 else x, f"step {step}")

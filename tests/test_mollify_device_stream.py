"""The device-resident stream (README, "CUDA graphs"), run on the CPU: the kernels of the ``cpu``,
``cuda`` (host-run) and ``triton`` (interpreter) backends read ``[key, offset]`` from memory
(CPU words here, device words on a GPU) and the call advances them after its kernels, so one
prepared launch run twice (what a CUDA graph replay does) draws consecutive stream positions and
leaves the generator where two eager calls leave it. The capture itself needs a GPU
(``tests/test_mollify_gpu.py``)."""
import copy
import pickle

import pytest
import torch

import mollify_fast as mf
from mollify_fast.generator import DeviceStream, advance_resident, resident_words
from mollify_fast._validate import resolve_params

from conftest import backend_or_skip

BACKENDS = ["cpu", "cuda", "triton"]


@pytest.fixture(autouse=True)
def _emulate(monkeypatch):
    monkeypatch.setenv("MOLLIFY_FAST_CUDA_EMULATE", "1")


def _resident(seed: int) -> mf.Generator:
    g = mf.Generator(seed)
    g._make_resident(torch.device("cpu"))  # CPU words: what the host-run kernels can read
    return g


CASES = [
    dict(shape=(3, 2, 9, 11), kw={}),
    dict(shape=(4, 1, 12, 10), kw=dict(blur_sigma=0.8)),
    dict(shape=(5, 7), kw=dict(alpha=torch.tensor([0.5, 1.0, 1.5, 2.0, 0.1]))),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_resident_calls_equal_eager_calls_and_leave_the_same_position(backend, case):
    backend_or_skip(backend)
    shape, kw = CASES[case]["shape"], CASES[case]["kw"]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(case))
    g_dev, g_host = _resident(11), mf.Generator(11)
    for call in range(3):
        want = mf.mollify(x, 0.4, generator=g_host, backend=backend, **kw)
        got = mf.mollify(x, 0.4, generator=g_dev, backend=backend, **kw)
        assert torch.equal(got, want), (backend, case, call)
        words = resident_words(g_dev._state)
        assert int(words[1]) == g_host.offset  # advanced on the "device", by the call
    assert g_dev.state_dict() == g_host.state_dict()  # the host view reads the words back


def _prepared(backend: str, x, out, p, stream):
    """One launch with its arguments fixed once, as a CUDA graph holds it: a callable that runs it."""
    if backend == "triton":
        from mollify_fast.backends import mollify_triton as T

        launches = T._plan(x, out, None, p, stream)
        return lambda: T._launch(launches, None)
    from mollify_fast._call import Call
    from mollify_fast.backends._native import call_args, extension

    args = call_args(Call(x=x, sigma=p.sigma, out=out, params=p, rng=stream))
    ext, _ = extension()
    return lambda: ext.mollify_cuda_emulated(args)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("blur", [None, 1.0])
def test_one_prepared_launch_replayed_draws_consecutive_positions(backend, blur):
    backend_or_skip(backend)
    x = torch.randn(2, 3, 16, 12, generator=torch.Generator().manual_seed(3))
    g_dev, g_host = _resident(5), mf.Generator(5)
    words = resident_words(g_dev._state)
    out = torch.empty_like(x)
    p = resolve_params(x, 0.3, 0.9, blur, None)
    replay = _prepared(backend, x, out, p, DeviceStream(words))  # prepared once: (seed, offset) not in it
    kw = {} if blur is None else {"blur_sigma": blur}
    for k in range(3):
        replay()
        advance_resident(words, x.numel())  # the call's own step after its kernels (captured with them)
        want = mf.mollify(x, 0.3, alpha=0.9, generator=g_host, backend=backend, **kw)
        assert torch.equal(out, want), (backend, blur, k)
    assert g_dev.offset == g_host.offset == 3 * ((x.numel() + 3) // 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dequantising_uint8_reads_both_groups_from_the_words(backend):
    backend_or_skip(backend)
    x = torch.randint(0, 256, (3, 2, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    g_dev, g_host = _resident(9), mf.Generator(9)
    for _ in range(2):
        want = mf.mollify(x, 0.2, dequantize=True, generator=g_host, backend=backend)
        got = mf.mollify(x, 0.2, dequantize=True, generator=g_dev, backend=backend)
        assert torch.equal(got, want)
    assert g_dev.offset == g_host.offset == 2 * 2 * ((x.numel() + 3) // 4)


def test_host_side_draws_move_the_words_too():
    # A backend whose kernels take the stream by value (reference) draws on the host: it reads the
    # words' offset back first and writes the advanced one, so the resident calls that follow
    # continue the stream.
    x = torch.randn(4, 3, 8, 8)
    g_dev, g_host = _resident(2), mf.Generator(2)
    seq = ["cpu", "reference", "cuda", "torch", "triton"]
    for b in seq:
        backend_or_skip(b) if b != "triton" else None
    for b in seq:
        if b == "triton":
            backend_or_skip(b)
        want = mf.mollify(x, 0.5, generator=g_host, backend=b)
        got = mf.mollify(x, 0.5, generator=g_dev, backend=b)
        assert torch.equal(got, want), b
        assert int(resident_words(g_dev._state)[1]) == g_host.offset, b


def test_fast_path_and_mollifier_on_a_resident_generator():
    x = torch.randn(64, 16)
    g_dev, g_host = _resident(4), mf.Generator(4)
    for _ in range(3):  # plain eager calls: the cached-plan path must hand a resident stream over
        assert torch.equal(mf.mollify(x, 0.7, generator=g_dev), mf.mollify(x, 0.7, generator=g_host))
    assert g_dev.offset == g_host.offset
    m_dev, m_host = mf.Mollifier(10, generator=_resident(8)), mf.Mollifier(10, generator=mf.Generator(8))
    for step in range(4):
        assert torch.equal(m_dev(x, step), m_host(x, step))
    assert m_dev.state_dict() == m_host.state_dict()


def test_reseed_copy_and_return_to_the_host():
    x = torch.randn(6, 10)
    g = _resident(1)
    mf.mollify(x, 0.5, generator=g, backend="cpu")
    g.manual_seed(21, 4)  # restarts on the host and on the words
    assert g.resident_device == torch.device("cpu")
    assert resident_words(g._state).tolist()[1] == 4
    ref = mf.Generator(21, 4)
    assert torch.equal(mf.mollify(x, 0.5, generator=g, backend="cuda"), mf.mollify(x, 0.5, generator=ref, backend="cuda"))
    for c in (copy.deepcopy(g), pickle.loads(pickle.dumps(g)), g.clone()):
        assert c.resident_device is None and c.state_dict() == g.state_dict()  # a host copy that continues it
        assert torch.equal(mf.mollify(x, 0.5, generator=c, backend="cpu"),
                           mf.mollify(x, 0.5, generator=ref.clone(), backend="cpu"))
    g.to_device("cpu")
    assert g.resident_device is None and g.state_dict() == ref.state_dict()
    assert torch.equal(mf.mollify(x, 0.5, generator=g), mf.mollify(x, 0.5, generator=ref))


def test_to_device_refuses_other_devices():
    with pytest.raises(ValueError, match="CUDA device or 'cpu'"):
        mf.Generator(0).to_device("meta")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_compiled_calls_mutate_the_words_not_the_host_state(backend):
    # Under inductor (fullgraph) the op receives the resident stream's words: the host state is
    # not an input the graph mutates (on a GPU that keeps the op inside a CUDA graph).
    torch._dynamo.reset()
    g_dev, g_host = _resident(6), mf.Generator(6)
    host_before = g_dev._state.clone()
    f = torch.compile(lambda x, g: mf.mollify(x * 2, 0.5, generator=g, backend=backend), fullgraph=True)
    x = torch.randn(8, 16)
    for _ in range(3):
        assert torch.equal(f(x, g_dev), mf.mollify(x * 2, 0.5, generator=g_host, backend=backend))
    assert torch.equal(g_dev._state, host_before)  # only the words moved
    assert g_dev.offset == g_host.offset  # and the host view reads them


def test_capture_params_use_device_tensors_as_they_are():
    # What a captured call gets for its parameters (no host sync): device tensors, one value per
    # sample, read at each replay; numbers as always. Run here with CPU "device" tensors.
    from mollify_fast._call import Call
    from mollify_fast._validate import _captured_params as captured

    x = torch.randn(4, 3, 8, 8)

    def _captured_params(x, sigma, alpha, blur_sigma, blur_radius):
        return captured(x, Call(x=x, sigma=sigma, alpha=alpha, blur_sigma=blur_sigma, blur_radius=blur_radius))

    sig = torch.tensor([0.1, 0.2, 0.3, 0.4])
    p = _captured_params(x, sig, None, None, None)
    want = resolve_params(x, sig, None, None, None)
    assert torch.equal(p.sigma, want.sigma) and torch.allclose(p.alpha, want.alpha, rtol=0, atol=6e-8)
    p0 = _captured_params(x, torch.tensor(0.25), 1.5, 1.2, None)
    assert torch.equal(p0.sigma, torch.full((4,), 0.25)) and p0.alpha == 1.5 and p0.max_radius == 4
    p1 = _captured_params(x, 0.3, torch.tensor([1.0, 2.0, 3.0, 4.0]), None, None)
    assert p1.sigma == 0.3 and torch.equal(p1.alpha, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(RuntimeError, match="blur_sigma must be a number"):
        _captured_params(x, 0.3, None, torch.tensor(1.0), None)
    with pytest.raises(RuntimeError, match="must be on x's device"):
        _captured_params(x, torch.tensor([0.1] * 4, device="meta"), None, None, None)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        _captured_params(x, -0.5, torch.tensor([1.0] * 4), None, None)


def test_mollifier_moves_with_the_module_and_dtype_moves_change_nothing():
    m = mf.Mollifier(10, generator=mf.Generator(3))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), m)
    model.double().to("cpu").float()
    assert m.generator.resident_device is None  # the host: CPU moves keep it there
    m.generator._make_resident(torch.device("cpu"))
    model.to(torch.float64)  # a dtype-only move: still resident
    assert m.generator.resident_device == torch.device("cpu")


WORDS_COMPILE_SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from benchmarks.sass import compile as C
from mollify_fast.backends import mollify_triton as T
from mollify_fast.generator import DeviceStream
from mollify_fast._validate import resolve_params
out = []
words = torch.zeros(2, dtype=torch.int64)
for shape, blur in (((8, 3, 32, 32), None), ((4, 3, 32, 32), 1.0), ((2, 3, 64, 64), 3.5)):
    x = torch.empty(shape)
    p = resolve_params(x, 0.3, 0.9, blur, None)
    launches = T._plan(x, torch.empty_like(x), None, p, DeviceStream(words))
    for L in launches:
        comp = C.triton_compile(L.kernel, L.args, {**L.constexprs, **L.options})
        out.append({"kernel": L.kernel.__name__, "words": L.constexprs["WORDS"], "spills": list(comp.spills),
                    "words_arg": comp.info["signature"].get("words_ptr")})
print(json.dumps(out))
"""


def test_device_stream_variants_compile_for_sm90():
    # The interpreter accepts more than the compiler: the WORDS variants (the int64 loads and the
    # key's split into two uint32 words) go through Triton's real compiler and ptxas for sm_90.
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", WORDS_COMPILE_SCRIPT, root], capture_output=True, text=True, env=env,
                       cwd=root, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    kernels = {g["kernel"] for g in got}
    assert kernels == {"_mollify_noise_kernel", "_mollify_blur_kernel", "_mollify_blur_axis_kernel"}, got
    for g in got:
        assert g["words"] is True and g["words_arg"] == "*i64" and g["spills"] == [0, 0], g


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_restarting_a_resident_stream_keeps_its_words(backend):
    # A captured graph holds the words' address: load_state_dict / manual_seed (a resumed run) and
    # a repeated to_device must refill the same words, or the graph would draw a stream nobody reads.
    backend_or_skip(backend)
    x = torch.randn(2, 3, 8, 8)
    g = _resident(1)
    words = resident_words(g._state)
    out = torch.empty_like(x)
    p = resolve_params(x, 0.3, 0.9, None, None)
    replay = _prepared(backend, x, out, p, DeviceStream(words))
    replay()
    advance_resident(words, x.numel())
    g.load_state_dict({"seed": 77, "offset": 5})
    assert resident_words(g._state) is words and g._words is words
    replay()
    advance_resident(words, x.numel())
    assert torch.equal(out, mf.mollify(x, 0.3, alpha=0.9, generator=mf.Generator(77, 5), backend=backend))
    assert g.state_dict() == {"seed": 77, "offset": 5 + (x.numel() + 3) // 4}

"""README, "The noise stream": ``mf.Generator`` streams under copies, checkpoints and threads."""
import copy
import io
import os
import pickle
import queue
import sys
import threading

import pytest
import torch

import mollify_fast as mf
from mollify_fast import generator as mgen
from conftest import SUBPROCESS_LIMIT_S  # noqa: E402


def _draw(g, n=16, backend="reference"):
    """Pure noise (sigma = 1 on zeros) for ``n`` elements from ``g``."""
    return mf.mollify(torch.zeros(1, n), 1.0, generator=g, backend=backend)


def _copy(g, how):
    if how == "deepcopy":
        return copy.deepcopy(g)
    if how == "copy":
        return copy.copy(g)
    if how == "pickle":
        return pickle.loads(pickle.dumps(g))
    buf = io.BytesIO()
    torch.save(g, buf)
    buf.seek(0)
    if how == "torch.save":
        return torch.load(buf, weights_only=False)
    with torch.serialization.safe_globals([mf.Generator]):  # weights_only=True
        return torch.load(buf)


@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle", "torch.save", "torch.save weights_only"])
def test_copy_of_a_used_generator_keeps_advancing_and_continues_the_stream(how):
    g = mf.Generator(9)
    _draw(g)  # first use: whatever the call path caches on the state is in place now
    c = _copy(g, how)
    assert c.state_dict() == g.state_dict() == {"seed": 9, "offset": 4}
    got = [_draw(c) for _ in range(2)]
    # 16 elements are 4 counter groups per call: the copy's counter moves with its draws.
    assert c.state_dict() == {"seed": 9, "offset": 12}
    assert g.state_dict() == {"seed": 9, "offset": 4}, "drawing from the copy moved the original"
    # A copy is a checkpoint: it continues the original's stream from where it was copied.
    want = [_draw(g) for _ in range(2)]
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_state_dict_round_trip_equals_uninterrupted_run():
    full = mf.Generator(2**64 - 5)  # a seed with the top bit set travels as a negative int64
    uninterrupted = [_draw(full, 12) for _ in range(5)]
    g = mf.Generator(2**64 - 5)
    for _ in range(2):
        _draw(g, 12)
    ckpt = pickle.loads(pickle.dumps(g.state_dict()))
    resumed = mf.Generator(0)
    resumed.load_state_dict(ckpt)
    for k in range(2, 5):
        assert torch.equal(_draw(resumed, 12), uninterrupted[k]), k


def test_generator_none_draws_its_seed_at_first_use_from_torch():
    torch.manual_seed(3)
    g = mf.Generator(None)
    state = torch.get_rng_state()
    assert g.state_dict() == {"seed": None, "offset": 0}
    assert torch.equal(torch.get_rng_state(), state), "reading the state drew from PyTorch's RNG"
    a = _draw(g)
    assert g.initial_seed() == g.state_dict()["seed"] is not None and g.offset == 4
    torch.manual_seed(3)
    b = _draw(mf.Generator(None))
    assert torch.equal(a, b), "not reproducible with torch.manual_seed"
    again = mf.Generator(None)
    again.load_state_dict({"seed": None, "offset": 0})
    assert again.state_dict()["seed"] is None


def _unique_groups(noise: torch.Tensor) -> bool:
    groups = noise.reshape(-1, 4)
    return torch.unique(groups, dim=0).shape[0] == groups.shape[0]


class _SwitchOften:
    """Thread switches every microsecond, so a switch between reading and advancing the
    counter (the old race) happens thousands of times per test instead of almost never."""

    def __enter__(self):
        self.old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)

    def __exit__(self, *exc):
        sys.setswitchinterval(self.old)


def _run_threads(target, args_per_thread):
    start = threading.Barrier(len(args_per_thread))  # both threads run at the same time

    def body(*args):
        start.wait()
        target(*args)

    with _SwitchOften():
        ts = [threading.Thread(target=body, args=a) for a in args_per_thread]
        for t in ts:
            t.start()
        for t in ts:
            t.join()


def test_threads_never_share_counter_groups():
    # The read-advance of the counter itself, 20,000 times per thread (the old code handed
    # the same offset to both threads thousands of times here).
    g = mf.Generator(11)
    per_thread, offsets = 20000, [[], []]

    def work(out):
        for _ in range(per_thread):
            out.append(mgen.take_stream(g._state, 4)[1])

    _run_threads(work, [(o,) for o in offsets])
    drawn = offsets[0] + offsets[1]
    assert len(set(drawn)) == len(drawn), f"{len(drawn) - len(set(drawn))} offsets handed out twice"
    assert g.offset == 2 * per_thread


def test_threads_through_mollify_draw_distinct_noise():
    g = mf.Generator(12)
    per_thread, results = 1000, [[], []]

    def work(out):
        x = torch.zeros(1, 4)  # one counter group per call
        for _ in range(per_thread):
            out.append(mf.mollify(x, 1.0, generator=g, backend="reference"))

    _run_threads(work, [(r,) for r in results])
    assert g.offset == 2 * per_thread
    assert _unique_groups(torch.cat(results[0] + results[1]))


@pytest.mark.skipif(mgen._atomic_take is None, reason="needs the compiled extension (its atomic take)")
def test_threads_mixing_the_launch_call_take_and_take_stream_lose_no_advance():
    # The cpu fast path takes its stream inside the extension call, take_stream (the general
    # path, other backends) through the same atomic step: interleaved from two threads, no
    # advance is lost (a lost one would hand a counter group out twice) and each call's noise
    # is its own.
    g = mf.Generator(13)
    mgen.take_stream(g._state, 4)  # derive the key: from here both routes are the atomic step
    per_thread, results, offsets = 20000, [], []  # 2,000 did not catch a non-atomic take; 20,000 did
    x = torch.zeros(1, 4)  # one counter group per call

    def fast(out):
        for _ in range(per_thread):
            out.append(mf.mollify(x, 1.0, generator=g, backend="cpu"))

    def general(out):
        for _ in range(per_thread):
            out.append(mgen.take_stream(g._state, 4)[1])

    _run_threads(lambda f, out: f(out), [(fast, results), (general, offsets)])
    assert g.offset == 1 + 2 * per_thread
    assert _unique_groups(torch.cat(results))
    # The general thread's groups are not among the fast thread's: replaying them gives noise
    # no fast call drew.
    ref = {tuple(mf.mollify(x, 1.0, generator=mf.Generator(13, o), backend="reference").flatten().tolist())
           for o in offsets[:200]}
    assert not ref & {tuple(r.flatten().tolist()) for r in results}
    assert len(set(offsets)) == len(offsets)


def test_torch_generator_per_call_is_thread_safe_and_reproducible():
    # The torch backend turns a stream (seed, offset) into a torch.Generator. One shared
    # torch.Generator per device let two threads reseed it under each other's draws.
    streams = [(5, k) for k in range(200)]

    def draw(stream):
        return torch.empty(64).normal_(generator=mgen.torch_generator(torch.device("cpu"), stream))

    want = [draw(s) for s in streams]
    got = [None] * len(streams)

    def work(idx):
        for i in idx:
            got[i] = draw(streams[i])

    _run_threads(work, [(range(r, len(streams), 2),) for r in range(2)])
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"stream {streams[i]} drew other numbers under threads"
    assert mgen.torch_generator(torch.device("cpu"), None) is None  # None: PyTorch's default


def test_errors():
    with pytest.raises(TypeError, match="seed"):
        mf.Generator(1.5)
    with pytest.raises(ValueError, match="offset"):
        mf.Generator(1, -1)
    with pytest.raises(ValueError, match="state"):
        mf.Generator(1).load_state_dict({"seed": 1})


def test_torch_backend_reproducible_under_threads():
    # Each thread its own generator: the torch backend's numbers for a stream position must not
    # depend on what another thread draws at the same time (it shared one torch.Generator per
    # device, reseeded by each call).
    seeds, calls = (21, 22), 3000
    x = torch.zeros(2, 64)

    def run(seed, out):
        g = mf.Generator(seed)
        for _ in range(calls):
            out.append(mf.mollify(x, 1.0, generator=g, backend="torch"))

    want = []
    for s in seeds:
        want.append([])
        run(s, want[-1])
    got = [[], []]
    _run_threads(run, list(zip(seeds, got)))
    for s, a, b in zip(seeds, got, want):
        bad = sum(not torch.equal(u, v) for u, v in zip(a, b))
        assert bad == 0, f"seed {s}: {bad} of {calls} calls drew other numbers under threads"


def test_uint64_tensor_seed_at_the_top_of_the_range():
    g = mf.Generator(torch.tensor(2**64 - 1, dtype=torch.uint64))
    assert g.initial_seed() == 2**64 - 1
    assert torch.equal(_draw(g), _draw(mf.Generator(2**64 - 1)))


def test_deepcopy_of_an_undrawn_default_generator_continues_the_same_stream():
    torch.manual_seed(4)
    g = mf.Generator(None)
    c = copy.deepcopy(g)
    torch.manual_seed(5)  # whatever PyTorch's RNG does after the copy, the copy is a checkpoint
    a = _draw(g)
    torch.manual_seed(6)
    assert torch.equal(_draw(c), a), "the copy drew another seed than the original"


def test_torch_generator_names():
    g = mf.Generator(1234, offset=8)
    assert g.initial_seed() == 1234 and g.device == torch.device("cpu")
    state = g.get_state()
    assert state.dtype == torch.int64 and state.device.type == "cpu" and state.dim() == 1
    a = _draw(g)
    g.set_state(state)
    assert torch.equal(_draw(g), a), "set_state(get_state()) did not restart at the same position"
    assert g.state_dict() == {"seed": 1234, "offset": 12}
    # seed(): a new non-deterministic seed, returned and set, offset 0 (torch.Generator.seed()).
    s = g.seed()
    assert isinstance(s, int) and g.initial_seed() == s and g.offset == 0
    assert g.seed() != s  # two 64-bit draws from the OS agree with probability 2**-64
    # The old attribute reading of `seed` still reads the seed.
    g.manual_seed(77)
    assert g.seed == 77 and int(g.seed) == 77 and g.state_dict()["seed"] == 77
    # A pending seed round-trips through get_state too.
    p = mf.Generator(None)
    q = mf.Generator(3)
    q.set_state(p.get_state())
    assert q.state_dict() == {"seed": None, "offset": 0}
    with pytest.raises(TypeError, match="set_state"):
        q.set_state(torch.zeros(3))
    with pytest.raises(ValueError, match="set_state"):
        q.set_state(torch.zeros(5, dtype=torch.int64))


def test_cuda_emulation_set_after_a_refusal_is_honoured(monkeypatch):
    from mollify_fast import backends

    if backends.availability("cpu")[0] is False:
        pytest.skip("the compiled extension is not built here")
    x = torch.zeros(1, 8)
    monkeypatch.delenv("MOLLIFY_FAST_CUDA_EMULATE", raising=False)
    if torch.cuda.is_available():
        pytest.skip("with a GPU the cuda backend is available without emulation")
    with pytest.raises(mf.BackendUnavailableError, match="MOLLIFY_FAST_CUDA_EMULATE=1"):
        mf.mollify(x, 1.0, generator=mf.Generator(1), backend="cuda")
    monkeypatch.setenv("MOLLIFY_FAST_CUDA_EMULATE", "1")  # what the refusal says to do
    got = mf.mollify(x, 1.0, generator=mf.Generator(1), backend="cuda")
    ref = _draw(mf.Generator(1), 8)
    assert ((got - ref).abs() <= 2e-5 * (1 + ref.abs())).all(), "the emulated cuda kernels drew other noise"


def _child_mollify_cpu(x, q):
    q.put(mf.mollify(x, 1.0, generator=mf.Generator(9), backend="cpu").numpy())  # by value


def test_forked_child_after_a_multithreaded_cpu_call_does_not_hang():
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    x = torch.zeros(4, 65536)  # 16 threads' worth of work (one thread per 16,384 elements)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        want = mf.mollify(x, 1.0, generator=mf.Generator(9), backend="cpu")  # multithreaded here
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child_mollify_cpu, args=(x, q))
        p.start()
        try:
            got = q.get(timeout=SUBPROCESS_LIMIT_S)  # (read before join: the child exits once its result is read)
        except queue.Empty:
            pytest.fail("the forked child hung in the cpu backend (OpenMP after fork)")
        finally:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        assert p.exitcode == 0
        assert torch.equal(torch.from_numpy(got), want), "the child drew other numbers"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(mgen._atomic_take is None, reason="needs the compiled extension (its atomic take)")
def test_a_provisional_key_takes_the_launch_call_route_with_the_same_stream():
    # A Mollifier's generator is per-rank: without a process group its key is provisional
    # (OWNER == -pid) and is rechecked at each draw. The cpu launch call takes such a stream
    # itself (no process group: the key holds), with the numbers and offsets of the Python route.
    g, h = mf.Generator(31), mf.Generator(31)
    g._key_per_rank()
    h._key_per_rank()
    x = torch.zeros(3, 7)
    for _ in range(3):
        fast = mf.mollify(x, 1.0, generator=g, backend="cpu")
        slow = mf.mollify(x, 1.0, generator=h, backend="reference")
        assert int(g._state[mgen.OWNER]) == -os.getpid()  # still provisional
        torch.testing.assert_close(fast, slow, rtol=0, atol=2e-6 * (1 + float(slow.abs().max())))
        assert g.state_dict() == h.state_dict()
    # and the launch call refuses the provisional key once told it no longer holds
    assert mgen._atomic_take(g._state.data_ptr(), 4, False) is None
    before = g.offset
    assert mgen._atomic_take(g._state.data_ptr(), 4, True) == (int(g._state[mgen.KEY]) & mgen.MASK64, before)
    assert g.offset == before + 1

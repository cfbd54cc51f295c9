"""The per-call fast path (README, "Per-call overhead"): cached launch plans and the cpu kernels' thread choice.

Behaviour only (speed lives in benchmarks/micro/bench_mollify_sweep.py):

* a cached plan never serves a call it does not fit: other strides, dtype, storage, storage
  offset, parameter kinds, return_noise, backend; the result of every call equals the general
  path's for the same generator state (bit for bit: same backend, same stream);
* the fast path refuses every bad input exactly as the general path does (same exception,
  nothing written, no stream advanced), also when a plan for the layout is already cached;
* the cpu kernels' thread count, picked from the work size, never changes a result.

The general path is forced by passing sigma as a numpy float64 (the plan path takes Python
numbers and 0-d tensors only); it checks, resolves and packs every argument from scratch.
"""
import importlib

import numpy as np
import pytest
import torch

import mollify_fast as mf
from conftest import assert_parity, backend_or_skip
from test_mollify_validation import CASES

MOD = importlib.import_module("mollify_fast._op")


def _general(x, sigma, **kw):
    """The same call through the general path (numpy numbers are not planned)."""
    return mf.mollify(x, np.float64(sigma), **kw)


def _planned_keys():
    return {k for k, v in MOD._plans.items() if v is not None}


def _both(x, sigma, seed=3, **kw):
    """(fast, general) results of one call from generators in the same state; checks that the
    fast one went through a cached plan."""
    before = _planned_keys()
    fast = mf.mollify(x, sigma, generator=mf.Generator(seed, offset=11), **kw)
    used = _planned_keys() - before
    ref = _general(x, sigma if not torch.is_tensor(sigma) else float(sigma), generator=mf.Generator(seed, offset=11), **kw)
    return fast, ref, used


def _equal(a, b, what=""):
    if isinstance(a, tuple):
        for u, v in zip(a, b):
            _equal(u, v, what)
        return
    assert a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype, what
    # NaN where the edge values overflow (alpha * x = -inf, sigma * eps = +inf): equal there too.
    assert torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True), \
        f"{what}: fast path differs from the general path"


@pytest.mark.parametrize("backend", ["cpu", "torch", "auto"])
def test_plan_matches_general_path_across_layouts_and_kinds(backend):
    """One layout after another on the same shape: every call equals the general path, and a
    plan is made for each new (strides, dtype, kinds, return_noise) combination."""
    if backend != "auto":
        backend_or_skip(backend)
    MOD._plans.clear()
    base = torch.randn(6, 10)
    layouts = [
        ("contiguous", base),
        ("transposed strides", base.t().contiguous().t()),
        ("sliced", torch.randn(6, 20)[:, ::2]),
        ("float64", base.double()),
        ("bfloat16", base.bfloat16()),
        ("storage offset", torch.randn(80)[17:77].view(6, 10)),
    ]
    for name, x in layouts:
        for kw in (dict(), dict(alpha=0.9), dict(return_noise=True), dict(alpha=1.25, return_noise=True)):
            for sigma in (0.5, torch.tensor(0.25), 1, torch.tensor(0.75, dtype=torch.float64)):
                fast, ref, _ = _both(x, sigma, backend=backend, **kw)
                _equal(fast, ref, f"{name} {kw} sigma={sigma!r}")
    # Each (strides, dtype) and kind got its own plan: distinct layouts (the storage offset
    # shares the contiguous one's: pointers are read per call) x 2 alpha kinds x 2 return_noise.
    distinct = {(x.stride(), x.dtype) for _, x in layouts}
    keys = [k for k in _planned_keys() if k[-1] == backend]
    assert len(distinct) == len(layouts) - 1
    if backend == "torch":
        # The torch backend plans float32/float64 without returned noise only (its float16/bfloat16
        # path works through float32 scratch, and returned noise keeps eps: general path).
        planned = {d for d in distinct if d[1] in (torch.float32, torch.float64)}
        assert len(keys) == len(planned) * 2
    else:
        assert len(keys) == len(distinct) * 4


def test_plan_does_not_keep_pointers():
    """Same layout, other memory: a new tensor, a storage offset, and a tensor whose storage
    was replaced (``set_``) or resized to another shape all read their own data."""
    backend_or_skip("cpu")
    a = torch.randn(8, 4)
    first, _, _ = _both(a, 0.5)
    b = torch.randn(8, 4) * 10
    fast, ref, _ = _both(b, 0.5)
    _equal(fast, ref, "another tensor")
    assert not torch.equal(fast, first)
    buf = torch.randn(64)
    for off in (0, 7, 32):
        x = buf[off:off + 32].view(8, 4)
        fast, ref, _ = _both(x, 0.5)
        _equal(fast, ref, f"storage offset {off}")
    x = torch.randn(8, 4)
    mf.mollify(x, 0.5, generator=mf.Generator(1))
    x.set_(torch.randn(8, 4).untyped_storage(), 0, (8, 4), (4, 1))
    fast, ref, _ = _both(x, 0.5)
    _equal(fast, ref, "after set_")
    x.resize_(4, 8)
    fast, ref, _ = _both(x, 0.5)
    _equal(fast, ref, "after resize_")


def test_plan_follows_backend_choice():
    """The backend is part of the plan's key: calls alternating backends on one layout each
    run the backend they name (last_backend) and give that backend's numbers."""
    backend_or_skip("cpu")
    x = torch.randn(16, 3)
    for backend in ("cpu", "torch", "auto", "torch", "cpu"):
        fast, ref, _ = _both(x, 0.5, backend=backend)
        expect = "cpu" if backend == "auto" else backend
        assert mf.last_backend() == expect
        _equal(fast, ref, backend)
    cpu, _, _ = _both(x, 0.5, backend="cpu")
    tor, _, _ = _both(x, 0.5, backend="torch")
    assert not torch.equal(cpu, tor), "torch draws PyTorch's own normals: a plan served the wrong backend"
    ref = mf.mollify(x, 0.5, generator=mf.Generator(3, offset=11), backend="reference")
    assert_parity(cpu, ref, "cpu plan vs reference")


def test_plan_without_generator_is_reproducible():
    """generator=None: the seed comes from PyTorch's default generator on the plan path too."""
    backend_or_skip("cpu")
    x = torch.randn(32, 4)
    for backend in ("cpu", "torch"):
        torch.manual_seed(0)
        a = mf.mollify(x, 0.5, backend=backend)
        torch.manual_seed(0)
        b = _general(x, 0.5, backend=backend)
        _equal(a, b, backend)


FAST_CASES = [
    ("sigma 0-d nan", lambda x: dict(x=x, sigma=torch.tensor(float("nan"))), ValueError, ["sigma", "finite"]),
    ("sigma 0-d > 1 vp", lambda x: dict(x=x, sigma=torch.tensor(1.5)), ValueError, ["sigma", "alpha"]),
    ("sigma 0-d < 0", lambda x: dict(x=x, sigma=torch.tensor(-0.5, dtype=torch.float64)), ValueError, ["sigma", ">= 0"]),
    ("sigma 0-d complex", lambda x: dict(x=x, sigma=torch.tensor(0.5 + 0j)), TypeError, ["sigma"]),
    ("sigma 0-d bool", lambda x: dict(x=x, sigma=torch.tensor(True)), TypeError, ["sigma"]),
    ("sigma bool", lambda x: dict(x=x, sigma=True), TypeError, ["sigma"]),
    ("alpha 0-d inf", lambda x: dict(x=x, sigma=0.5, alpha=torch.tensor(float("inf"))), ValueError, ["alpha", "finite"]),
    ("alpha 0-d 1e39 float32", lambda x: dict(x=x, sigma=0.5, alpha=torch.tensor(1e39, dtype=torch.float64)),
     ValueError, ["alpha", "float32"]),
    ("sigma inf vp", lambda x: dict(x=x, sigma=float("inf")), ValueError, ["sigma"]),
    ("sigma 10**400 vp", lambda x: dict(x=x, sigma=10**400), ValueError, ["sigma"]),
    ("alpha nan int sigma", lambda x: dict(x=x, sigma=1, alpha=float("nan")), ValueError, ["alpha", "finite"]),
    ("unhashable backend", lambda x: dict(x=x, sigma=0.5, backend=["cpu"]), ValueError, ["backend"]),
    ("generator not a Generator", lambda x: dict(x=x, sigma=0.5, generator=object()), TypeError, ["generator"]),
]


@pytest.mark.parametrize("case,build,exc,words", CASES + FAST_CASES,
                         ids=[c[0] for c in CASES + FAST_CASES])
@pytest.mark.parametrize("backend", ["cpu", "torch", "auto"])
def test_bad_input_refused_with_plan_cached(case, build, exc, words, backend):
    """The validation battery without ``out`` (so calls reach the plan path), after a good call
    has cached a plan for x's layout: the same errors, x untouched, no stream advanced."""
    if backend != "auto":
        backend_or_skip(backend)
    x = torch.randn(4, 3, 6, 5)
    kw = build(x)
    kw.setdefault("backend", backend)
    src = kw.pop("x")
    if torch.is_tensor(src) and src.dtype.is_floating_point and src.dim() >= 1 and not src.requires_grad:
        good = mf.mollify(src, 0.5, generator=mf.Generator(0), backend=backend)
        assert good.shape == src.shape
    before = src.detach().clone() if torch.is_tensor(src) else None
    g = mf.Generator(5, offset=3)
    with pytest.raises(exc) as info:
        mf.mollify(src, kw.pop("sigma"), generator=kw.pop("generator", g), **kw)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"message {msg!r} should mention {w!r}"
    if before is not None:
        assert torch.equal(src.detach(), before), "x was modified"
    assert g.offset == 3, "the generator advanced on a failed call"


def test_edge_numbers_accepted_like_general_path():
    """Values at the edges that are valid take the plan and match the general path."""
    backend_or_skip("cpu")
    x = torch.randn(4, 5)
    for sigma, kw in ((0.0, {}), (-0.0, {}), (1.0, {}), (0, {}), (1, {}), (3.0, dict(alpha=0.0)),
                      (3.4e38, dict(alpha=-3.4e38)), (1e300, dict(alpha=1.0))):
        xx = x.double() if sigma == 1e300 else x
        fast, ref, _ = _both(xx, sigma, **kw)
        _equal(fast, ref, f"sigma={sigma} {kw}")


def test_plan_cache_is_bounded():
    backend_or_skip("cpu")
    for n in range(1, MOD._MAX_PLANS + 40):
        mf.mollify(torch.zeros(n, 1), 0.5, generator=mf.Generator(0))
    assert 0 < len(MOD._plans) <= MOD._MAX_PLANS


# ---- threads: picked from the work size, never changing a result ----


def _ext():
    backend_or_skip("cpu")
    from mollify_fast.backends._native import extension

    return extension()[0]


def test_thread_choice_bounds():
    """At least 1 and at most the allowed count; non-decreasing in the work size; one thread
    for a tiny call, all of them for a huge one."""
    ext = _ext()
    for allowed in (1, 2, 3, 8):
        counts = [ext.threads_for(n, allowed) for n in [1, 16, 256, 4096, 2**14, 2**15, 2**17, 2**20, 2**30]]
        assert counts == sorted(counts)
        assert all(1 <= c <= allowed for c in counts)
        assert counts[0] == 1 and counts[-1] == allowed
    assert ext.threads_for(10**6, 0) == 1


def _same_on_1_2_3_threads(x, call) -> None:
    """``call()`` with 1, 2 and 3 cpu threads, x's elements forced onto each (a grain of 64
    elements per thread), gives the same bits every time."""
    ext = _ext()
    saved_threads = torch.get_num_threads()
    results = []
    old = ext.set_parallel_grain(64)
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert ext.threads_for(x.numel(), threads) == threads
            results.append(call())
    finally:
        ext.set_parallel_grain(old)
        torch.set_num_threads(saved_threads)
    for r in results[1:]:
        _equal(r, results[0], "thread count changed the result")


@pytest.mark.parametrize("blur", [None, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_results_identical_for_any_thread_count(blur, dtype):
    """Small inputs forced onto several threads (a grain of 64 elements per thread) give the
    same bits as one thread, through the plan path and the general path."""
    x = torch.randn(5, 3, 17, 13).to(dtype).permute(0, 1, 3, 2)  # strided, several work items
    _same_on_1_2_3_threads(x, lambda: mf.mollify(x, 0.5, blur_sigma=blur, generator=mf.Generator(7),
                                                 return_noise=True, backend="cpu"))


def test_input_map_results_identical_for_any_thread_count():
    """The input-map kernel (uint8 in, dequantised, floats out) splits its work items over
    threads as the noise kernel does: several threads give one thread's bits."""
    x = torch.randint(0, 256, (5, 3, 17, 13), dtype=torch.uint8).permute(0, 1, 3, 2)
    _same_on_1_2_3_threads(x, lambda: mf.mollify(x, 0.5, generator=mf.Generator(7), dequantize=True,
                                                 input_scale=1 / 256, return_noise=True, backend="cpu"))

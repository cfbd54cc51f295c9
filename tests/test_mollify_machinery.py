"""``mollify`` inside PyTorch's machinery: torch.jit.trace, torch.func (grad, vmap), activation
checkpointing, and tensor kinds (neg views, inference, meta, sparse) and numpy parameters.
Everything runs the real machinery on CPU tensors."""
import numpy as np
import pytest
import torch
import torch.utils.checkpoint as cp

import mollify_fast as mf

CPU_BACKENDS = ["torch", "reference", "cpu", "triton", "cuda"]


@pytest.fixture
def emulate_cuda(monkeypatch):
    """The cuda backend's host code on CPU tensors (its kernels' __host__ __device__ math)."""
    monkeypatch.setenv("MOLLIFY_FAST_CUDA_EMULATE", "1")
    mf.backends.availability.cache_clear()  # availability() reads the variable; the registry caches it
    yield
    mf.backends.availability.cache_clear()


def _backend_ok(backend):
    try:
        mf.mollify(torch.zeros(2, 4), 0.5, backend=backend)
    except mf.backends.BackendUnavailableError:
        pytest.skip(f"backend {backend} unavailable here")


# ---- torch.jit.trace ----

class _Noisy(torch.nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g = g
        self.lin = torch.nn.Linear(5, 5)

    def forward(self, x):
        return self.lin(mf.mollify(x, 0.5, blur_sigma=0.8, generator=self.g, backend="reference"))


def test_jit_trace_records_the_op_and_draws_fresh_noise():
    """Before: the trace held only aten::empty_like (the eager shortcut ran the kernel unseen),
    so the traced module returned uninitialised memory."""
    x = torch.rand(2, 3, 4, 5)
    m = _Noisy(mf.Generator(11))
    traced = torch.jit.trace(m, (x,), check_trace=False)
    assert "mollify_fast::mollify" in str(traced.graph), traced.graph
    m.g.manual_seed(5)
    got = [traced(x) for _ in range(2)]
    ref_g = mf.Generator(5)
    want = [m.lin(mf.mollify(x, 0.5, blur_sigma=0.8, generator=ref_g, backend="reference")) for _ in range(2)]
    assert m.g.offset == ref_g.offset
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert not torch.equal(got[0], got[1])


class _WithMollifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mol = mf.Mollifier(10, generator=mf.Generator(3))

    def forward(self, x):
        return self.mol(x, 2)


def test_jit_trace_of_a_held_mollifier_records_the_op():
    """mol(x, step) under jit.trace takes nn.Module's call path, not the plan path (whose kernel
    the trace would not see: the traced module would return uninitialised memory)."""
    x = torch.rand(4, 6)
    traced = torch.jit.trace(_WithMollifier(), (x,), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "mollify_fast::mollify" in graph, graph
    ref = mf.Mollifier(10, generator=mf.Generator(3))
    ref(x, 2)  # the draw the trace itself made
    first, second = traced(x), traced(x)
    assert torch.equal(first, ref(x, 2)) and torch.equal(second, ref(x, 2))
    assert not torch.equal(first, second)


# ---- torch.func ----

def _loss(w, x, g):
    y = mf.mollify(x, 0.5, generator=g, backend="cpu")
    return ((y.mean((0, 2)) * w) ** 2).sum()


def test_func_grad_through_mollify():
    """Before: "Cannot access data pointer of Tensor that doesn't have storage"."""
    _backend_ok("cpu")
    x, w = torch.rand(3, 4, 6), torch.rand(4)
    got = torch.func.grad(_loss)(w, x, mf.Generator(2))
    w2 = w.clone().requires_grad_()
    _loss(w2, x, mf.Generator(2)).backward()
    torch.testing.assert_close(got, w2.grad, rtol=0, atol=0)


@pytest.mark.parametrize("randomness", ["error", "same"])
def test_vmap_refuses_clearly_before_anything_moves(randomness):
    x = torch.rand(3, 2, 5, 6)
    g = mf.Generator(1, 4)
    with pytest.raises(RuntimeError, match=f"mollify.*vmap.*randomness='{randomness}'.*'different'"):
        torch.func.vmap(lambda t: mf.mollify(t, 0.5, blur_sigma=1.0, generator=g), randomness=randomness)(x)
    assert g.offset == 4


def test_vmap_out_is_refused_before_anything_moves():
    x = torch.rand(3, 2, 5)
    before = x.clone()
    g = mf.Generator(1, 4)
    with pytest.raises(RuntimeError, match="mollify.*vmap.*out="):
        torch.func.vmap(lambda t: mf.mollify(t, 0.5, generator=g, out=t), randomness="different")(x)
    assert g.offset == 4 and torch.equal(x, before)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vmap_different_draws_per_slice_noise(backend):
    """Each slice its own noise; the vmapped call equals one call on the merged [B*N, ...] batch
    (per-sample parameters broadcast over the slices, or batched themselves)."""
    _backend_ok(backend)
    b, n = 3, 2
    x = torch.rand(n, 4, 5, b)  # batched along the last dim
    sig = torch.tensor([0.2, 0.4])  # per sample, shared by the slices
    blur = torch.tensor([0.5, 1.0, 1.5])  # per slice (batched)

    def f(t, bl):
        return mf.mollify(t, sig, blur_sigma=bl, generator=g, backend=backend)

    g = mf.Generator(9)
    got = torch.func.vmap(f, in_dims=(3, 0), randomness="different")(x, blur)
    merged = x.movedim(3, 0).reshape(b * n, 4, 5)
    ref_g = mf.Generator(9)
    want = mf.mollify(merged, sig.repeat(b), blur_sigma=blur.repeat_interleave(n), generator=ref_g, backend=backend)
    assert torch.equal(got, want.reshape(b, n, 4, 5))
    assert g.offset == ref_g.offset == (b * n * 20 + 3) // 4
    assert not torch.equal(got[0], got[1])


# ---- activation checkpointing ----

class _Block(torch.nn.Module):
    """A block that mollifies its input twice (two draws) around a layer with dropout."""

    def __init__(self, draw):
        super().__init__()
        self.draw = draw
        self.lin = torch.nn.Linear(6, 6)

    def forward(self, h):
        h = self.lin(h + self.draw(h.detach()))
        h = torch.nn.functional.dropout(h, 0.3, training=True)
        return torch.tanh(h * self.draw(h.detach()))


def _drawers(kind):
    """A fresh draw function and a way to read its generator's offset (None for PyTorch's RNG)."""
    if kind == "mollifier":
        m = mf.Mollifier(10, generator=mf.Generator(3), backend="cpu")
        return (lambda t: m(t, step=2)), (lambda: m.generator.offset)
    if kind == "generator":
        g = mf.Generator(3)
        return (lambda t: mf.mollify(t, 0.5, generator=g, backend="cpu")), (lambda: g.offset)
    if kind == "resident":  # a device-resident stream (README, "CUDA graphs"), its words on the CPU here
        g = mf.Generator(3)
        g._make_resident(torch.device("cpu"))
        return (lambda t: mf.mollify(t, 0.5, generator=g, backend="cpu")), (lambda: g.offset)
    return (lambda t: mf.mollify(t, 0.5, backend="cpu")), (lambda: None)


@pytest.mark.parametrize("kind", ["mollifier", "generator", "resident", "default"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_recomputation_replays_the_noise(kind, reentrant):
    """Before: the recomputation drew new noise (gradients differed from the unchecked step)
    and the generator advanced twice. Two checkpointed blocks in a row, each drawing twice."""
    _backend_ok("cpu")
    x = torch.rand(4, 6)
    grads, offsets = [], []
    for use_cp in (False, True):
        torch.manual_seed(0)
        draw, offset = _drawers(kind)
        blocks = torch.nn.ModuleList([_Block(draw), _Block(draw)])
        h = x.requires_grad_(False).clone().requires_grad_()
        for blk in blocks:
            h = cp.checkpoint(blk, h, use_reentrant=reentrant) if use_cp else blk(h)
        h.sum().backward()
        grads.append([p.grad for p in blocks.parameters()])
        offsets.append(offset())
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    assert offsets[0] == offsets[1]


def _recording_block(g):
    """A checkpointable block that mollifies its input with ``g`` and records each draw."""
    lin = torch.nn.Linear(6, 6)
    seen = []

    def block(h):
        y = mf.mollify(h.detach(), 0.5, generator=g, backend="cpu")
        seen.append(y)
        return lin(h + y)

    return block, seen


def test_checkpoint_twice_in_a_row_each_step_gets_its_own_noise():
    """Two training steps whose CPU RNG state is the same at the checkpoint: the second step's
    recomputation must replay the second step's draw, not the first's."""
    _backend_ok("cpu")
    g = mf.Generator(5)
    block, seen = _recording_block(g)

    for _ in range(2):
        torch.manual_seed(1)
        cp.checkpoint(block, torch.rand(3, 6, requires_grad=True), use_reentrant=False).sum().backward()
    assert len(seen) == 4 and torch.equal(seen[0], seen[1]) and torch.equal(seen[2], seen[3])
    assert not torch.equal(seen[0], seen[2])
    assert g.offset == 2 * ((18 + 3) // 4)


# ---- tensor kinds ----

def _neg_view(shape):
    z = torch.complex(torch.rand(shape), torch.rand(shape))
    v = z.conj().imag
    assert v.is_neg()
    return v


def _twin(v):
    """The values of ``v`` in a view of the same strides without the neg bit (the torch
    backend's noise depends on out's layout, so a reference needs the same layout)."""
    t = torch.zeros(v.shape, dtype=torch.complex64 if v.dtype == torch.float32 else torch.complex128).imag
    assert t.stride() == v.stride() and not t.is_neg()
    return t.copy_(v)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("blur", [None, 1.0])
def test_neg_views_are_honoured(backend, blur, emulate_cuda):
    """Before: cpu, cuda and triton dropped the sign of x and of out."""
    _backend_ok(backend)
    x = _neg_view((2, 3, 5, 6))

    def run(src, **kw):
        return mf.mollify(src, 0.3, blur_sigma=blur, generator=mf.Generator(4), backend=backend, **kw)

    assert torch.equal(run(x), run(x.resolve_neg()))
    out, ref = _neg_view((2, 3, 5, 6)), _twin(x)
    run(x, out=out)
    assert torch.equal(out, run(x, out=ref))
    ref = _twin(x)
    run(ref, out=ref)
    run(x, out=x)  # in place
    assert torch.equal(x, ref) and x.is_neg()


@pytest.mark.parametrize("backend", ["torch", "reference", "cpu"])
def test_inference_out_outside_inference_mode_is_refused(backend):
    _backend_ok(backend)
    with torch.inference_mode():
        x = torch.rand(2, 3)
    before = x.clone()
    g = mf.Generator(0, 8)
    with pytest.raises(RuntimeError, match="mollify: out is an inference tensor.*inference_mode"):
        mf.mollify(x, 0.5, generator=g, out=x, backend=backend)
    assert torch.equal(x, before) and g.offset == 8
    with torch.inference_mode():  # inside inference mode it is allowed
        mf.mollify(x, 0.5, generator=g, out=x, backend=backend)
    assert g.offset == 10 and not torch.equal(x, before)
    # reading an inference tensor outside inference mode is fine
    assert mf.mollify(before, 0.5, backend=backend).shape == x.shape


@pytest.mark.parametrize("backend", ["auto", "torch", "reference", "cpu"])
def test_meta_x_gives_a_shape_only_result_and_the_generator_stays(backend):
    x = torch.empty(4, 3, 8, 8, device="meta")
    g = mf.Generator(0, 8)
    y = mf.mollify(x, 0.5, blur_sigma=1.0, generator=g, backend=backend)
    assert y.is_meta and y.shape == x.shape and y.dtype == x.dtype
    y, eps = mf.mollify(x, 0.5, generator=g, backend=backend, return_noise=True)
    assert y.is_meta and eps.shape == x.shape
    assert mf.mollify(x, 0.5, generator=g, backend=backend, out=x) is x
    assert g.offset == 8


@pytest.mark.parametrize("backend", ["auto", "torch", "cpu"])
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_is_refused_up_front(backend, layout):
    d = torch.rand(4, 5)
    sp = d.to_sparse() if layout == "coo" else d.to_sparse_csr()
    g = mf.Generator(0, 8)
    with pytest.raises(TypeError, match=r"mollify: x must be a dense.*layout torch\.sparse.*x\.to_dense\(\)"):
        mf.mollify(sp, 0.5, generator=g, backend=backend)
    with pytest.raises(TypeError, match=r"mollify: out must be a dense.*out\.to_dense\(\)"):
        mf.mollify(d, 0.5, generator=g, backend=backend, out=sp)
    assert g.offset == 8


# ---- numpy parameters ----

@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_numpy_reversed_and_longdouble_per_sample_parameters(backend):
    _backend_ok(backend)
    x = torch.rand(5, 3, 4)
    rev = np.linspace(0.1, 0.9, 5)[::-1]
    want = mf.mollify(x, torch.tensor(rev.copy()), generator=mf.Generator(1), backend=backend)
    assert torch.equal(mf.mollify(x, rev, generator=mf.Generator(1), backend=backend), want)
    ld = np.linspace(0.1, 0.9, 5).astype(np.longdouble)
    want = mf.mollify(x, 0.0, alpha=torch.tensor(ld.astype(np.float64)), generator=mf.Generator(1), backend=backend)
    assert torch.equal(mf.mollify(x, 0.0, alpha=ld, generator=mf.Generator(1), backend=backend), want)


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("preserve", [True, False])
def test_checkpoint_replays_each_step_in_a_long_loop(reentrant, preserve):
    """A loop of checkpointed steps in which nothing draws from PyTorch's RNG (so its state is
    the same at every step) and the checkpoint call's Python objects are freed and their
    addresses reused: every step's recomputation replays that step's draw (a journal keyed by
    the RNG state and object ids replayed the first step's draw in 19 of 20 steps)."""
    _backend_ok("cpu")
    g = mf.Generator(5)
    x = torch.rand(3, 6, requires_grad=True)
    block, seen = _recording_block(g)

    for step in range(20):
        seen.clear()
        cp.checkpoint(block, x, use_reentrant=reentrant, preserve_rng_state=preserve).sum().backward()
        assert len(seen) == 2 and torch.equal(seen[0], seen[1]), f"step {step}: the recomputation drew other noise"
        want = mf.mollify(x.detach(), 0.5, generator=mf.Generator(5, offset=step * 5), backend="cpu")
        assert torch.equal(seen[0], want), f"step {step}: not the generator's next draw"
    assert g.offset == 20 * 5

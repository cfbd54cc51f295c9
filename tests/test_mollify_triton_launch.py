"""The triton backend's low-overhead launch path, checked on CPU with a fake kernel.

After the first launch of a specialisation through Triton's dispatcher (``kernel[grid](...)``),
``mollify_triton`` keeps the ``CompiledKernel`` it returned and launches later calls through it,
as ``JITFunction.run`` does after binding. No GPU here, so the compiled kernel is a recording
fake and the dispatcher is replaced: these tests check which path each call takes, the exact
arguments the compiled launcher gets (against ``inspect.signature(...).bind``, the order Triton
binds in), that a new specialisation (dtype, alignment, shape) misses the cache while a new
stream does not, and that any error on the fast path falls back to the dispatcher for good.
A real launch is checked by the GPU tests (tests/test_mollify_gpu*.py) on a CUDA machine.
"""
import inspect
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from mollify_fast._call import Params  # noqa: E402
from mollify_fast.backends import mollify_triton as M  # noqa: E402
from mollify_fast.backends import _triton_launch as TL  # noqa: E402  # owns the launch path's state and hooks
from conftest import SUBPROCESS_LIMIT_S  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_LAYOUT = M._kernel_layout
STREAM = object()  # what the fake "current stream" returns


class FakeCompiled:
    """Records ``run`` calls the way Triton's compiled launcher receives them."""

    def __init__(self, fail=False):
        self.calls, self.fail = [], fail
        self.function, self.packed_metadata = "fn", "meta"

    def launch_metadata(self, grid, stream, *args):
        assert stream is STREAM
        return ("md", grid)

    def run(self, *a):
        if self.fail:
            raise TypeError("launcher signature changed")
        self.calls.append(a)


class Dispatcher(list):
    """Stands in for ``kernel[grid](...)``: records (launch, compiled kernel it returned)."""

    fail = False  # the FakeCompiled it returns will raise when launched

    def __call__(self, L):
        ck = FakeCompiled(fail=self.fail)
        self.append((L, ck))
        return ck


@pytest.fixture
def fake(monkeypatch):
    """Compiled path enabled as on a GPU; the dispatcher returns a fresh FakeCompiled each time."""
    layouts = {}

    def kernel_layout(k):
        # Under TRITON_INTERPRET=1 the kernels are InterpretedFunctions (no .params): derive
        # the layout from the Python signature (test_kernel_layout_matches_the_signature checks
        # the library's own on real JITFunctions).
        if k not in layouts:
            layouts[k] = _layout_from_signature(k.fn, k.kwargs.get("do_not_specialize", ())) if INTERPRET \
                else KERNEL_LAYOUT(k)
        return layouts[k]

    monkeypatch.setattr(TL, "_kernel_layout", kernel_layout)
    monkeypatch.setattr(TL, "_interpret", lambda: False)
    monkeypatch.setattr(TL, "_current_stream", lambda: STREAM)
    dispatcher = Dispatcher()
    monkeypatch.setattr(TL, "_jit_launch", dispatcher)
    monkeypatch.setattr(TL, "_COMPILED", {})
    monkeypatch.setattr(TL, "_FAST", {"on": True, "error": None})
    return dispatcher


def _layout_from_signature(fn, do_not_specialize):
    params = list(inspect.signature(fn).parameters.values())
    const = [p.name for p in params if p.annotation in (triton.language.constexpr, "tl.constexpr")]
    runtime = [p.name for p in params if p.name not in const]
    assert [p.name for p in params] == runtime + const
    return frozenset(i for i, n in enumerate(runtime) if n in do_not_specialize), tuple(const)


def _launches(x, blur=None, stream=(3, 5), noise=False):
    p = Params(0.5, 0.8, blur, 2 if blur else 0, 2 if blur else 0)
    return M._plan(x, torch.empty_like(x), torch.empty_like(x) if noise else None, p, stream)


@pytest.mark.parametrize("blur", [None, 1.0])
def test_second_call_launches_the_kept_compiled_kernel(fake, blur):
    x = torch.randn(4, 3, 8, 12)
    M._launch(_launches(x, blur), 0)
    assert len(fake) == 1
    ck = fake[0][1]
    L = _launches(x, blur, stream=(2**40 + 3, 2**33 + 17))  # a new stream: same specialisation
    M._launch(L, 0)
    assert len(fake) == 1, "the dispatcher ran again for an already compiled specialisation"
    assert len(ck.calls) == 1
    (L,) = L
    bound = inspect.signature(L.kernel.fn).bind(*L.args, **L.constexprs)
    want_args = tuple(bound.arguments.values())  # JITFunction.run passes bound_args.values()
    grid = tuple(L.grid) + (1,) * (3 - len(L.grid))
    got = ck.calls[0]
    assert got[:7] == (*grid, STREAM, "fn", "meta", ("md", L.grid))
    assert len(got) == 9 + len(want_args)
    for i, (g, w) in enumerate(zip(got[9:], want_args)):
        assert g is w or g == w, f"argument {i} ({L.kernel.arg_names[i]}): {g!r} != {w!r}"


@pytest.mark.parametrize("change", ["dtype", "misaligned", "shape", "constexpr", "device"])
def test_new_specialisation_goes_through_the_dispatcher(fake, change):
    x = torch.randn(4, 3, 8, 12)
    M._launch(_launches(x), 0)
    y, dev, kw = x, 0, {}
    if change == "dtype":
        y = x.to(torch.bfloat16)
    elif change == "misaligned":
        y = torch.randn(x.numel() + 1)[1:].view(x.shape)  # data_ptr % 16 == 4
    elif change == "shape":
        y = torch.randn(4, 3, 8, 16)
    elif change == "constexpr":
        kw = dict(noise=True)
    else:
        dev = 1
    M._launch(_launches(y, **kw), dev)
    assert len(fake) == 2
    assert not fake[0][1].calls


def test_fast_path_error_falls_back_for_the_rest_of_the_process(fake):
    x = torch.randn(4, 3, 8, 12)
    fake.fail = True
    M._launch(_launches(x), 0)  # compiles; the kept kernel's launcher will raise
    M._launch(_launches(x), 0)  # fast path raises -> this launch through the dispatcher
    assert len(fake) == 2 and TL._FAST["on"] is False and "TypeError" in TL._FAST["error"]
    fake.fail = False
    for _ in range(2):
        M._launch(_launches(x), 0)
    assert len(fake) == 4, "after a failure every launch must go through Triton's dispatcher"
    assert all(not ck.calls for _, ck in fake)
    assert not TL._COMPILED


def test_interpreter_never_uses_the_compiled_path(fake, monkeypatch):
    monkeypatch.setattr(TL, "_interpret", lambda: True)
    x = torch.randn(4, 3, 8, 12)
    for _ in range(2):
        M._launch(_launches(x), None)
    assert len(fake) == 2 and not TL._COMPILED


KERNEL_LAYOUT_SCRIPT = """
import inspect, json
import triton
from mollify_fast.backends import mollify_triton as M
out = {}
for name in ("_mollify_noise_kernel", "_mollify_blur_kernel", "_mollify_blur_axis_kernel"):
    k = getattr(M, name)
    dns, const = M._kernel_layout(k)
    out[name] = [sorted(dns), list(const), list(k.do_not_specialize)]
print(json.dumps(out))
"""


def test_kernel_layout_matches_the_signature():
    """The library reads the layout from real JITFunction parameters (no interpreter): it must
    agree with the kernels' Python signatures and decorator arguments."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", KERNEL_LAYOUT_SCRIPT], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for name, (dns, const, dont) in got.items():
        k = getattr(M, name)
        want = _layout_from_signature(k.fn, dont)
        assert (frozenset(dns), tuple(const)) == want, name
        assert len(dns) == 4, f"{name}: the four stream halves are not specialised"


KEY_SCRIPT = r"""
import json, torch
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import create_function_from_signature
from mollify_fast._call import Params
from mollify_fast.backends import mollify_triton as M

backend = make_backend(GPUTarget("cuda", 90, 32))
base = torch.randn(2 * 3 * 8 * 12 + 8)
xs = {
    "contiguous": torch.randn(2, 3, 8, 12),
    "bfloat16": torch.randn(2, 3, 8, 12).to(torch.bfloat16),
    "misaligned": base[1:1 + 2 * 3 * 8 * 12].view(2, 3, 8, 12),
    "aligned view": base[4:4 + 2 * 3 * 8 * 12].view(2, 3, 8, 12),
    "channels_last": torch.randn(2, 3, 8, 12).contiguous(memory_format=torch.channels_last),
    "other shape": torch.randn(2, 3, 16, 12),
    "one sample": torch.randn(1, 3, 8, 12),
}
streams = [(0, 0), (1, 1), (2**63 + 5, 2**32 + 16), (2**64 - 1, 2**40)]
by_key = {}
for name, x in xs.items():
    for blur in (None, 1.0):
        for ps in (False, True):
            sig = torch.full((x.shape[0],), 0.5) if ps else 0.5
            for st in streams:
                p = Params(sig, 0.8, blur, 2 if blur else 0, 2 if blur else 0)
                for L in M._plan(x, torch.empty_like(x), None, p, st):
                    types = tuple(map(type, L.args))
                    key = M._spec_key(L, 0, types, M._arg_roles(L.kernel, types))
                    binder = create_function_from_signature(L.kernel.signature, L.kernel.params, backend)
                    _, spec, opts = binder(*L.args, **L.constexprs, **L.options)
                    by_key.setdefault(key, set()).add(repr(spec) + repr(opts))
print(json.dumps({"keys": len(by_key), "worst": max(len(v) for v in by_key.values())}))
"""


def test_equal_keys_mean_equal_triton_specialisation():
    """Launches that share a key share Triton's own specialisation (its binder, sm_90 target):
    the kept kernel is never launched for arguments Triton would have compiled differently
    (alignment, dtype, layout, shape, per-sample pointers), whatever the stream."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", KEY_SCRIPT], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["worst"] == 1, f"a key covers {got['worst']} different Triton specialisations"
    assert 14 <= got["keys"] <= 7 * 2 * 2, got  # at most one key per input/flag combination: none per stream

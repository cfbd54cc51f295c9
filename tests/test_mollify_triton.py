"""The ``triton`` backend's own contract points, beside the shared parity tests.

* Every form of every parameter (number, 0-d tensor, per-sample tensor; default or explicit
  blur radius) against ``mollify_fast.reference`` on every compiled backend: the launcher once
  passed the wrong tensor as the per-sample radius pointer, and no test had that combination.
* The launch plan (``_plan``): grids within CUDA's limits for tall images and many planes,
  radii the kernels cannot mirror refused, and the specialisation Triton's launcher derives
  from the arguments independent of the stream (seed, offset), so a training run whose offset
  advances compiles one variant, not eight.
* Every ``tl.*`` name the kernels use exists in the Triton that runs them (3.6 has no
  ``tl.to_tensor``; ``tests/triton_min_version.sh`` runs this file under the lowest supported
  Triton).

Triton runs on CPU tensors under ``TRITON_INTERPRET=1`` (conftest.py); the specialisation test
runs in a subprocess with ``TRITON_INTERPRET=0`` (no GPU needed: it only binds arguments).
"""
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import SUBPROCESS_LIMIT_S, assert_backend_parity, assert_parity, backend_or_skip

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = ["cpu", "triton", "cuda"]
N = 3


def _device(backend):
    if backend == "cpu" or (backend == "triton" and INTERPRET):
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return "cuda"


def _forms(values):
    """A parameter as a Python number, a 0-d tensor and a per-sample ``[N]`` tensor."""
    return {"number": values[0], "0-d": torch.tensor(values[0]), "per-sample": torch.tensor(values)}


SIGMAS = _forms([0.6, 0.0, 0.9])
ALPHAS = dict(_forms([0.8, -1.5, 0.25]), vp=None)
# Per-sample blur sigmas with default radii 2, 0 (identity), 5; all radii < min(H, W) = 7.
BLURS = dict(_forms([0.6, 0.0, 1.6]), none=None)
RADII = {"default": None, "explicit": 4}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("blur", list(BLURS))
@pytest.mark.parametrize("radius", list(RADII))
def test_every_parameter_form_matches_reference(backend, blur, radius):
    """sigma x alpha forms for one blur form and radius; out and noise vs the reference."""
    backend_or_skip(backend)
    dev = _device(backend)
    if BLURS[blur] is None and radius == "explicit":
        pytest.skip("blur_radius needs blur_sigma (refused by validation, tested there)")
    x = torch.rand(N, 2, 7, 9) * 2 - 1
    for (sn, s), (an, a) in itertools.product(SIGMAS.items(), ALPHAS.items()):
        kw = dict(alpha=a, blur_sigma=BLURS[blur], blur_radius=RADII[radius])
        what = f"{backend}: sigma {sn}, alpha {an}, blur_sigma {blur}, radius {radius}"
        mv = lambda v: v.to(dev) if torch.is_tensor(v) else v  # noqa: E731
        g = mf.Generator(99, 2**32 - 7)
        out, noise = mf.mollify(x.to(dev), mv(s), generator=g, return_noise=True, backend=backend,
                                **{k: mv(v) for k, v in kw.items()})
        assert mf.last_backend() == backend, what
        want, want_noise = mf.mollify(x, s, generator=mf.Generator(99, 2**32 - 7), return_noise=True,
                                      backend="reference", **kw)
        assert_backend_parity(out.cpu(), noise.cpu(), want, want_noise, x, s, what=what, **kw)


def test_per_sample_radius_explicit_differs_from_default():
    """The explicit radius must reach the kernel: with a radius of 1 instead of 5 the third
    sample differs from the default-radius result by far more than rounding."""
    backend_or_skip("triton")
    dev = _device("triton")
    x = torch.rand(N, 1, 7, 9, device=dev)
    bs = torch.tensor([0.6, 0.0, 1.6], device=dev)
    a = mf.mollify(x, 0.0, blur_sigma=bs, blur_radius=1, generator=mf.Generator(1), backend="triton")
    b = mf.mollify(x, 0.0, blur_sigma=bs, generator=mf.Generator(1), backend="triton")
    want = R.blur(x.cpu(), bs.cpu(), 1)
    assert_parity(a.cpu(), want, "explicit radius 1")
    assert (a[2] - b[2]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------
# The launch plan
# ----------------------------------------------------------------------------------------

MAX_GRID_YZ = 65535
MAX_GRID_X = 2**31 - 1


def _params(sigma=0.5, alpha=0.8, blur=None, radius=0):
    from mollify_fast._call import Params

    return Params(sigma, alpha, blur, radius, radius if not torch.is_tensor(radius) else int(radius.max()))


def _check_grid(launches):
    for L in launches:
        g = tuple(L.grid) + (1, 1)
        assert all(isinstance(v, int) and v >= 1 for v in L.grid), L.grid
        assert g[0] <= MAX_GRID_X and g[1] <= MAX_GRID_YZ and g[2] <= MAX_GRID_YZ, f"grid {L.grid} beyond CUDA's limits"


@pytest.mark.parametrize("radius", [0, 2, 9])  # the noise kernel, the fused blur, the two-pass blur
@pytest.mark.parametrize("per_sample", [(), ("sigma",), ("alpha", "blur_sigma"), ("sigma", "alpha", "blur_sigma")])
def test_plan_passes_each_per_sample_parameter_by_its_kernel_names(radius, per_sample):
    """The plan passes the per-sample parameters (``_call.PER_SAMPLE``) by the kernels' naming
    convention, not by position: bound to each kernel's own signature, ``<name>_ptr`` gets the
    tensor of a per-sample parameter, ``<name>`` the number of a scalar one, and
    ``<NAME>_PER_SAMPLE`` says which; a kernel takes every parameter it has a pointer for."""
    import inspect

    from mollify_fast._call import PER_SAMPLE
    from mollify_fast.backends import mollify_triton as M

    n = 3
    x = torch.empty(n, 2, 24, 24)
    blur = None if radius == 0 else 1.0
    values = {"sigma": 0.5, "alpha": 0.8, "blur_sigma": blur}
    if radius == 0:
        per_sample = tuple(name for name in per_sample if name != "blur_sigma")
    for i, name in enumerate(per_sample):
        if values[name] is not None:
            values[name] = torch.full((n,), 0.1 * (i + 1))
    p = _params(sigma=values["sigma"], alpha=values["alpha"], blur=values["blur_sigma"], radius=radius)
    launches = M._plan(x, torch.empty_like(x), None, p, (5, 7))
    assert len(launches) == (2 if radius > 8 else 1)
    for L in launches:
        bound = inspect.signature(L.kernel.fn).bind(*L.args, **L.constexprs).arguments
        takes = [name for name in PER_SAMPLE if f"{name}_ptr" in bound]
        assert takes == [name for name in PER_SAMPLE if radius or name != "blur_sigma"], L.kernel.__name__
        for name in takes:
            v = values[name]
            if torch.is_tensor(v):
                assert bound[f"{name}_ptr"] is v and bound[name] == 0.0 and bound[f"{name.upper()}_PER_SAMPLE"]
            else:
                assert bound[name] == v and not bound[f"{name.upper()}_PER_SAMPLE"]


@pytest.mark.parametrize("shape", [(1, 2**21, 4), (1, 3, 2**20 + 3, 2), (2**17, 1, 2, 3), (70000, 2, 3)])
@pytest.mark.parametrize("blur", [None, 1.0])
def test_plan_grid_within_cuda_limits(shape, blur):
    """More than 65,535 row tiles or planes: the grid stays within CUDA's per-axis limits and
    the launches cover every element (planning only: no kernel runs, so any size is cheap)."""
    from mollify_fast.backends import mollify_triton as M

    x = torch.empty(shape, dtype=torch.bfloat16)
    p = _params(blur=blur, radius=1 if blur else 0)
    launches = M._plan(x, torch.empty_like(x), None, p, (5, 7))
    _check_grid(launches)
    assert sum(L.elements for L in launches) == x.numel()


@pytest.mark.parametrize("shape", [(1, 2053, 5), (1500, 3, 2)])
def test_tall_and_many_plane_blur_matches_reference(shape):
    """Many row tiles and many planes under the interpreter: the program -> (plane, rows,
    columns) decomposition against the reference."""
    backend_or_skip("triton")
    dev = _device("triton")
    x = torch.randn(shape)
    g = mf.Generator(3, 11)
    out, noise = mf.mollify(x.to(dev), 0.3, blur_sigma=0.4, generator=g, return_noise=True, backend="triton")
    want, want_noise = mf.mollify(x, 0.3, blur_sigma=0.4, generator=mf.Generator(3, 11), return_noise=True,
                                  backend="reference")
    assert_backend_parity(out.cpu(), noise.cpu(), want, want_noise, x, 0.3, blur_sigma=0.4)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
@pytest.mark.parametrize("w", [8, 6])
@pytest.mark.parametrize("per_sample", [False, True])
def test_strided_noise_lanes_match_reference(layout, w, per_sample):
    """The noise kernel's strided path (four lane vectors; W % 4 == 0 decomposes the index once
    per group, otherwise per lane), with out given in another layout than x and noise returned:
    x, out and noise each read or written through their own strides."""
    backend_or_skip("triton")
    dev = _device("triton")
    base = torch.randn(3, 4, 5, w)
    x = base.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else \
        base.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x.is_contiguous()
    sigma = torch.tensor([0.3, 1.2, 0.0]) if per_sample else 0.6
    alpha = torch.tensor([0.5, -1.0, 2.0]) if per_sample else 0.9
    out = torch.empty(3, 4, 5, w).to(dev)  # contiguous: not x's layout
    got, noise = mf.mollify(x.to(dev), sigma, alpha=alpha, generator=mf.Generator(4, 8), return_noise=True,
                            out=out, backend="triton")
    want, want_noise = mf.mollify(x, sigma, alpha=alpha, generator=mf.Generator(4, 8), return_noise=True,
                                  backend="reference")
    assert got.data_ptr() == out.data_ptr()
    assert_backend_parity(got.cpu(), noise.cpu(), want, want_noise, x, sigma, alpha=alpha)


@pytest.mark.parametrize("kw", [dict(blur_sigma=3.0), dict(blur_sigma=1.0, blur_radius=9),
                                dict(blur_sigma=torch.tensor([0.5, 3.2]), blur_radius=11)],
                         ids=["sigma3-radius10", "radius9", "per-sample"])
def test_two_pass_blur_matches_reference(kw):
    """Radii beyond FUSED_MAX_RADIUS take the two launches of _mollify_blur_axis_kernel (runtime
    tap loop). Triton 3.6's interpreter could not run that loop (`for k in range(-radius, ...)`:
    int() of a 1-element NumPy array), and no test ran this path under the lowest Triton."""
    from mollify_fast.backends import mollify_triton as M

    backend_or_skip("triton")
    dev = _device("triton")
    x = torch.randn(2, 3, 23, 21)
    p = _params(blur=1.0, radius=max(9, int(kw.get("blur_radius", 10))))
    assert [L.kernel for L in M._plan(x, torch.empty_like(x), None, p, (1, 2))] == [M._mollify_blur_axis_kernel] * 2
    out, noise = mf.mollify(x.to(dev), 0.3, alpha=0.9, generator=mf.Generator(5, 3), return_noise=True,
                            backend="triton", **kw)
    want, want_noise = mf.mollify(x, 0.3, alpha=0.9, generator=mf.Generator(5, 3), return_noise=True,
                                  backend="reference", **kw)
    assert_backend_parity(out.cpu(), noise.cpu(), want, want_noise, x, 0.3, alpha=0.9, **kw)


@pytest.mark.parametrize("H,W,planes", [(17, 19, 15), (28, 28, 8), (64, 48, 24), (218, 178, 24), (64, 64, 24),
                                        (5, 3, 1), (1, 2053, 1), (3, 600, 7), (256, 256, 768)])
def test_blur_tiles_cover_the_image_with_little_waste(H, W, planes):
    """The fused tiling covers every row and column once, no program is wasted, and lanes past
    W and rows past H are no more than the power-of-2 tile shapes force: W = 48 runs as 3 blocks
    of 16 columns (not 64 with a quarter idle); H = 17 as 2 strips of 9 rows (not 16 + 1, both
    blurring 16 + 2R source rows)."""
    from mollify_fast.backends import mollify_triton as M

    share = W % 4 != 0  # the last thread of a column block lends its counter group, owns no columns
    bw, s, tile_h, strips, units, cb = M._blur_tiles(H, W, planes, True, share)
    assert bw * s == M.THREADS and bw & (bw - 1) == 0 and bw >= 4
    assert strips * tile_h >= H > (strips - 1) * tile_h and tile_h <= M.BLUR_TILE_H
    assert tile_h - -(-H // strips) == 0, "strips balanced"
    assert units == planes * strips
    per_block = 4 * (bw - share)
    assert cb * per_block >= W > (cb - 1) * per_block, "column blocks cover W, none empty"
    groups = -(-W // 4)
    programs = -(-units // s) * cb
    # No power-of-2 width from 4 to THREADS would launch fewer programs.
    for other in (4, 8, 16, 32, 64, 128):
        assert programs <= -(-units // (M.THREADS // other)) * -(-groups // (other - share)), other
    # And the plan's grid is exactly that many programs.
    x = torch.empty(planes, H, W)
    L, = M._plan(x, torch.empty_like(x), None, _params(blur=0.5, radius=min(2, H - 1, W - 1)), (1, 2))
    assert L.grid == (programs,) and (L.constexprs["S"], L.constexprs["BW"], L.constexprs["TILE_H"]) == (s, bw, tile_h)


@pytest.mark.parametrize("shape", [(2, 3, 17, 19), (3, 2, 12, 48), (1, 1, 21, 6), (8, 4, 9, 70), (4, 2, 10, 178)])
def test_blur_tiles_odd_shapes_match_reference(shape):
    """The balanced strips and narrow column blocks above, run: blur + noise against the
    reference (odd H, W not a multiple of 4, W = 48 in 3 column blocks). W = 70 and 178 span
    several column blocks with W % 4 != 0, where each thread takes its second counter group from
    its neighbour (tl.gather) and the block's last thread only lends its group: a wrong hand-over
    at a block edge shows in the noise."""
    from mollify_fast.backends import mollify_triton as M

    backend_or_skip("triton")
    dev = _device("triton")
    x = torch.randn(shape)
    if shape[-1] in (70, 178):
        planes = shape[0] * shape[1]
        cb = M._blur_tiles(shape[2], shape[3], planes, True, True)[-1]
        assert cb > 1, "several column blocks"
    out, noise = mf.mollify(x.to(dev), 0.4, alpha=0.7, blur_sigma=1.0, generator=mf.Generator(9, 4),
                            return_noise=True, backend="triton")
    want, want_noise = mf.mollify(x, 0.4, alpha=0.7, blur_sigma=1.0, generator=mf.Generator(9, 4),
                                  return_noise=True, backend="reference")
    assert_backend_parity(out.cpu(), noise.cpu(), want, want_noise, x, 0.4, alpha=0.7, blur_sigma=1.0)


def test_lending_thread_writes_nothing():
    """W % 4 != 0: a column block's last thread only lends its counter group to its neighbour;
    its columns belong to the next block. Run program 0 alone (block 0 of the first units) on an
    output full of NaN: exactly the block's 4 (BW - 1) columns are written. (Run in order, as the
    interpreter does, a stray write would be overwritten by the next block and go unseen; on a
    GPU the blocks race.)"""
    from mollify_fast.backends import mollify_triton as M

    backend_or_skip("triton")
    if not INTERPRET:
        pytest.skip("launches the kernel on CPU tensors: interpreter only")
    x = torch.randn(4, 2, 10, 178)
    out = torch.full_like(x, float("nan"))
    L, = M._plan(x, out, None, _params(blur=1.0, radius=3), (1, 2))
    S, BW = L.constexprs["S"], L.constexprs["BW"]
    assert not L.constexprs["ALIGNED"] and L.grid[0] > 1  # several column blocks
    L.kernel[(1,)](*L.args, **L.constexprs)
    cols = 4 * (BW - 1)
    planes = out.view(-1, 10, 178)
    assert torch.isfinite(planes[:S, :, :cols]).all()
    assert torch.isnan(planes[:S, :, cols:]).all() and torch.isnan(planes[S:]).all()


@pytest.mark.parametrize("W", [28, 40, 19])
def test_register_cap_only_where_checked_spill_free(W):
    """maxnreg is applied only to widths that are multiples of 16: capped at 80 registers the
    float32 R = 3 kernel spilled 372 bytes at 28 x 28 (sm_90, Triton 3.8)."""
    from mollify_fast.backends import mollify_triton as M

    for w in (W, 64):
        x = torch.empty(4, 3, 32, w)
        L, = M._plan(x, torch.empty_like(x), None, _params(blur=1.0, radius=3), (1, 2))
        assert ("maxnreg" in L.options) == (w % 16 == 0), (w, L.options)


@pytest.mark.parametrize("hw,radius", [((7, 9), 7), ((9, 4), 4), ((1, 5), 1)])
def test_plan_refuses_radius_beyond_one_reflection(hw, radius):
    """The kernels mirror once; radius >= min(H, W) is routed elsewhere before the launcher,
    and the plan refuses it loudly rather than reading out of bounds."""
    from mollify_fast.backends import mollify_triton as M

    x = torch.empty(2, *hw)
    with pytest.raises(ValueError, match="radius"):
        M._plan(x, torch.empty_like(x), None, _params(blur=1.0, radius=radius), (1, 2))


def test_plan_runs_on_cpu_tensors_without_gpu():
    """_plan touches no GPU: plan CUDA-shaped work on CPU tensors (what the SASS report does)."""
    code = textwrap.dedent(
        """
        import torch
        from mollify_fast._call import Params
        from mollify_fast.backends import mollify_triton as M
        x = torch.empty(4, 3, 32, 32, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        for blur in (None, 1.0):
            L = M._plan(x, torch.empty_like(x), torch.empty_like(x), Params(0.5, 0.8, blur, 3, 3), (1, 2))
            assert L and all(l.kernel.arg_names for l in L)
            names = [n for n in L[0].kernel.arg_names if n not in L[0].constexprs]
            assert len(names) == len(L[0].args), (names, len(L[0].args))
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


# The specialisation key Triton's launcher computes for each planned launch, through Triton's
# own binder (create_function_from_signature: the same function JITFunction.run calls), for an
# sm_90 target. No GPU is needed: binding only inspects argument types, values and alignment.
SPECIALISATION_SCRIPT = textwrap.dedent(
    r"""
    import json, torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    from mollify_fast._call import Params
    from mollify_fast.backends import mollify_triton as M

    backend = make_backend(GPUTarget("cuda", 90, 32))
    streams = [(0, 0), (1, 1), (2**32 + 1, 16), (16, 2**31), (2**63 + 5, 2**32 + 1), (2**64 - 1, 2**64 - 1),
               (12345, 2**40 + 48), (7, 2**63)]
    x = torch.randn(4, 3, 32, 32)
    cases = {
        "noise contiguous": (x, None),
        "noise channels_last": (x.contiguous(memory_format=torch.channels_last), None),
        "blur": (x, 1.0),
        "blur channels_last": (x.contiguous(memory_format=torch.channels_last), 1.0),
    }
    keys = {}
    for name, (t, blur) in cases.items():
        for st in streams:
            p = Params(0.5, 0.8, blur, 3 if blur else 0, 3 if blur else 0)
            for L in M._plan(t, torch.empty_like(t), torch.empty_like(t), p, st):
                binder = create_function_from_signature(L.kernel.signature, L.kernel.params, backend)
                _, spec, opts = binder(*L.args, **L.constexprs, **L.options)
                keys.setdefault(name, set()).add(str(spec) + str(opts))
    print(json.dumps({k: len(v) for k, v in keys.items()}))
    """
)


def test_stream_does_not_change_the_specialisation():
    """One compiled variant per layout for a whole run: seed and offset are passed so that
    Triton specialises on neither their value (1, multiples of 16) nor their width."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", SPECIALISATION_SCRIPT], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert counts and all(v == 1 for v in counts.values()), f"variants per layout over 8 streams: {counts}"


def test_kernels_use_only_names_this_triton_has():
    """Every ``tl.<name>`` in the backend exists in this Triton's ``triton.language`` (3.6 has
    no ``tl.to_tensor``): run under the lowest supported Triton by tests/triton_min_version.sh."""
    import triton
    import triton.language as tl

    from mollify_fast.backends import _triton_kernels, _triton_launch, _triton_plan, mollify_triton

    src = ""
    for m in (mollify_triton, _triton_kernels, _triton_plan, _triton_launch):  # the backend's modules
        with open(m.__file__) as f:
            src += f.read()
    names = set(re.findall(r"\btl\.([A-Za-z_]\w*)", src))
    missing = sorted(n for n in names if not hasattr(tl, n))
    assert not missing, f"triton {triton.__version__} has no tl.{', tl.'.join(missing)}"


@pytest.mark.parametrize("case", ["plain", "channels_last", "per-sample", "noise returned", "odd width", "radius 6",
                                  "bfloat16"])
def test_fused_blur_register_cap_only_where_checked(case):
    """ptxas' register cap (maxnreg) is applied only to the fused-blur variants checked
    spill-free at sm_90 (float32 R = 3, contiguous rows, scalar parameters, no returned noise):
    a cap elsewhere would spill (per-sample, channels_last and odd widths spilled 88-248 B)."""
    from mollify_fast.backends import mollify_triton as M

    x = torch.empty(2, 3, 16, 17 if case == "odd width" else 16)
    if case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if case == "bfloat16":
        x = x.to(torch.bfloat16)
    r = 6 if case == "radius 6" else 3
    sig = torch.full((2,), 0.5) if case == "per-sample" else 0.5
    noise = torch.empty_like(x) if case == "noise returned" else None
    (L,) = M._plan(x, torch.empty_like(x), noise, _params(sigma=sig, blur=1.0, radius=r), (1, 2))
    assert L.kernel is M._mollify_blur_kernel
    assert ("maxnreg" in L.options) == (case == "plain"), L.options

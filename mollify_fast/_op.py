"""The public op ``mollify`` and its two ``torch.library`` custom ops.

Path from the call to a kernel::

    mollify(...)                              argument checks (traceable), then
      -> torch.ops.mollify_fast.mollify       functional: allocates out (and noise)
         torch.ops.mollify_fast.mollify_out   writes a given out (out=x for in-place)
         (plain eager tensors skip the op dispatch and call _run directly: same code)
        -> _run                               value checks, backend choice, stream
          -> backends.mollify_<name>(...)     launcher -> kernel (noise=: the caller's eps is
                                              read where the kernel would draw; no stream)
          (or _run_unfused: a blur radius >= min(H, W) on a backend whose kernels mirror
           once: folded blur into a temporary, then the backend's noise kernel; or
           _run_contiguous: more dims that do not merge than the backend's kernels index: the
           same kernel on contiguous copies (backends.Limits);
           or _run_mapped: an input map that the backend's kernel does not apply itself, as
           with a blur: x_f into a temporary in the compute dtype, then the plain op on it)

The custom ops have fake (meta) implementations, so a step that calls ``mollify`` compiles
under ``torch.compile(fullgraph=True)``; the op stays opaque to the compiler, which is the
point: it is already one fused pass.

Fast path (``_fast``): an eager noise-only call with Python-number or 0-d-tensor parameters,
no ``out`` and no input map options (``input_scale``, ``input_shift``, ``dequantize``,
``out_dtype``; a uint8 x has no plan either) looks up a launch plan cached per (shape, strides, dtype, device, alpha given,
return_noise, backend). The plan holds the resolved backend and, for ``cpu``/``cuda``, the
kernel's layout arguments already packed (the layout's ``_C.Args``); a call then checks its numbers in one
comparison each, allocates, takes the stream and makes one extension call. Whatever the fast
path does not handle, or any value it would refuse, goes down the general path, which checks
and raises exactly as before: the fast path itself never raises and changes nothing before it
decides. README, "Per-call overhead", has the measured cost of both paths.

Under the compiler, Python numbers enter the graph as 0-d tensors (a ``float`` argument of a
custom op is specialised: one recompile per value), and every value check runs inside the op,
with real values, before the stream is taken.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, Literal, Optional, Tuple, Union, cast, overload

import torch

from . import backends
from ._blur import blur as blur_planes
from ._call import FUNCTIONAL_SCHEMA, OUT_ARGS, OUT_SCHEMA, PER_SAMPLE, Call, Param, Params, arg_dims
from ._validate import (FLOAT32_MAX, FLOAT_DTYPES, check_out_memory, check_static, compute_dtype,
                        kernel_params, same_view)
from ._validate import check_input_map, check_map_values, check_x, map_compute_dtype
from . import reference as _reference
from ._replay import in_checkpoint, take as take_replayable, untracked as replay_untracked
from .generator import (DeviceStream, Generator, advance_resident, default_group, draw_default_seed, read_words,
                        resident_words, take_words)

Number = Union[int, float]  # also numpy floating scalars and 0-d ndarrays
ParamLike = Union[Number, torch.Tensor]

__all__ = ["mollify", "last_backend"]

_last_backend: Optional[str] = None

from torch.autograd.graph import increment_version as _increment_version


def _capturing(x: torch.Tensor) -> bool:
    """True while x's CUDA stream is being captured into a CUDA graph."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _refuse_capture(why: str) -> None:
    raise RuntimeError(
        "mollify: called while a CUDA graph is being captured (torch.cuda.graph, or torch.compile with "
        f"mode='reduce-overhead' or 'max-autotune') {why}. Nothing was written and no generator moved "
        "(README, \"CUDA graphs\")."
    )


def _device_key(device: torch.device) -> DeviceStream:
    """The default generator's stream during capture: a key drawn on the device by PyTorch's own
    graph-safe RNG (so every replay draws a new one, reproducibly under torch.manual_seed),
    offset 0."""
    key = torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64, device=device)
    return DeviceStream(torch.cat([key, torch.zeros(1, dtype=torch.int64, device=device)]))


def last_backend() -> Optional[str]:
    """The backend that ran the most recent eager ``mollify`` call (for ``auto``), or None."""
    return _last_backend


def _run(call: Call) -> None:
    """Everything that reads values, in an order that writes nothing until all checks pass.

    ``call.out`` is given (the output dtype is its dtype). ``call.noise``: the buffer that
    receives eps (return_noise), or None. ``call.given_noise``: the caller's eps (``noise=``),
    read by the kernels instead of drawing: no stream is taken, and ``noise`` gets a copy of it
    (rounded to the output dtype)."""
    global _last_backend
    x, out, noise, eps, state = call.x, cast(torch.Tensor, call.out), call.noise, call.given_noise, call.stream
    dequant = call.dequantize
    capturing = _capturing(x)
    p: Params = kernel_params(_dtype_carrier(x, out), call)
    p = _with_map(p, x, out, call.input_scale, call.input_shift, dequant)
    mapped = p.maps(x, out)
    name, launch = backends.resolve(call.backend, _map_probe(x, out) if mapped else x, p)
    limits = backends.LIMITS[name]
    if capturing and eps is None and not limits.stream_words and not (limits.torch_rng and state is None):
        _refuse_capture(f"on backend {name!r}, whose kernels take the stream by value: every replay would repeat "
                        f"the captured noise; use backend 'cuda' or 'triton' (or 'auto')")
    # state (call.stream): a generator's host state (7 int64 words), or a device-resident stream's words
    # [key, offset] (what mollify passes for a resident generator).
    given_words = state is not None and state.numel() == 2
    words = state if given_words else None if state is None else resident_words(state)
    if words is not None and (words.device != x.device or not limits.stream_words
                              or (not capturing and not replay_untracked() and in_checkpoint())):
        # Drawn on the host (the device's offset read back first): a backend that takes the
        # stream by value, another device, or an eager call a checkpoint records or replays.
        words = None
    if capturing and state is not None and words is None and eps is None:
        _refuse_capture("with a Generator whose stream is on the host: every replay would repeat the captured "
                        "noise and the generator would not advance; call generator.to_device(x.device) before "
                        "the warm-up (a Mollifier moved with .to(device) does it)")
    # A lazily negated view (``z.conj().imag``) reads and writes with its sign flipped; the
    # kernels see raw memory, so they get a resolved x and write a temporary that is copied
    # into such an out (copy_ honours the sign).
    neg_out = None
    if out.is_neg():
        neg_out = out
        inplace = same_view(out, x)
        out = torch.empty_strided(out.shape, out.stride(), dtype=out.dtype, device=out.device)
        if inplace:  # stays in place, on a resolved copy of out's layout
            x = out.copy_(x)
    if x.is_neg():
        x = x.resolve_neg()
    if eps is not None:
        if eps.is_neg():
            eps = eps.resolve_neg()
        if limits.prepares_eps and not mapped:
            from .backends._native import eps_input

            eps = eps_input(x, eps)[0]  # the one conversion the C++ kernels need, if any
    # Decided before the stream is taken: nothing below refuses a call.
    unfused = x.numel() != 0 and not mapped and _beyond_image(limits, x, p)
    copies = x.numel() != 0 and not unfused and _too_many_dims(limits, x, out, noise if eps is None else eps, p)
    # (key, offset) by value, the words the kernels read (DeviceStream), or None (torch's RNG).
    stream: Union[Tuple[int, int], DeviceStream, None]
    if eps is not None:
        stream = (0, 0)  # not used: no generator moves, PyTorch's default one included
    elif words is not None:
        stream = DeviceStream(words)  # read by the kernels; advanced below, after them
    elif given_words:
        stream = take_replayable(cast(torch.Tensor, state), _stream_elements(x.numel(), dequant), take_words)
    elif state is not None:
        stream = take_replayable(state, _stream_elements(x.numel(), dequant))
    elif limits.torch_rng:
        stream = None  # the backend draws from PyTorch's default generator directly
    elif capturing:
        stream = _device_key(x.device)
    else:
        stream = (draw_default_seed(x.device), 0)
    _last_backend = name
    if x.numel() == 0:
        return
    if noise is not None and eps is not None:
        noise.copy_(eps)  # before out is written: out may be eps's own view (out=noise)
        noise = None  # the kernels read eps (given_noise) and write no eps
    # The record the launcher takes: the call with its resolved parts.
    k = call.replace(x=x, out=out, noise=noise, given_noise=eps, params=p, rng=stream)
    if mapped and (eps is not None or not backends.maps_input(name, x, out, p)):
        _run_mapped(name, launch, k)
    elif unfused:
        _run_unfused(launch, k)
    elif copies:
        _run_contiguous(launch, k)
    else:
        if p.blur_sigma is not None and same_view(out, x):
            # The blur reads neighbours that an in-place write would already have replaced:
            # blur a copy so that out=x gives exactly the out-of-place result.
            k = k.replace(x=x.clone())
        launch(k)
    if words is not None and eps is None:
        advance_resident(words, _stream_elements(x.numel(), dequant))
    if neg_out is not None:
        neg_out.copy_(out)


# ---- the input map (README, "The contract, in short"): uint8 in, floats out ----

def _dtype_carrier(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The tensor whose dtype gives the compute dtype to :func:`kernel_params`: x for the plain
    op and float64 x, else out (float64 compute exactly when x or the output is float64)."""
    return x if x.dtype == out.dtype or x.dtype == torch.float64 else out


def _with_map(p: Params, x: torch.Tensor, out: torch.Tensor, in_scale: float, in_shift: float,
              dequant: bool) -> Params:
    """``p`` with the input map, its values checked (finite, within the compute dtype)."""
    if not dequant and in_scale == 1.0 and in_shift == 0.0:
        return p
    check_map_values(in_scale, in_shift, map_compute_dtype(x.dtype, out.dtype))
    return replace(p, in_scale=float(in_scale), in_shift=float(in_shift), dequant=bool(dequant))


def _map_probe(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A storage-free stand-in for x_f (x's shape and device, the compute dtype) for a backend's
    ``supports``: a backend without its own input map runs on x_f (:func:`_run_mapped`)."""
    acc = map_compute_dtype(x.dtype, out.dtype)
    return torch.empty(1, dtype=acc, device=x.device).expand(x.shape)


def _stream_elements(numel: int, dequant: bool) -> int:
    """The element count whose groups a call takes from its stream: ``ceil(numel / 4)`` groups
    for the normals, twice that with ``dequant`` (README, "The noise stream")."""
    return 8 * ((numel + 3) >> 2) if dequant else numel


def _run_mapped(name: str, launch, call: Call) -> None:
    """A call with an input map on a backend whose kernel has none (or with the caller's eps,
    ``call.given_noise``, which the mapped kernels do not read): x_f (the map, with the stream's
    dequantisation uniforms) into a contiguous temporary in the compute dtype, then the plain
    op on it, written straight into out where out has the compute dtype, else into a temporary
    rounded once into out. Same numbers as the fused map, one more pass."""
    x, out, noise, p = call.x, call.target, call.noise, call.resolved
    acc = map_compute_dtype(x.dtype, out.dtype)
    map_only = replace(p.without_blur(), sigma=0.0, alpha=1.0)
    xf = torch.empty(x.shape, dtype=acc, device=x.device)
    if p.dequant and backends.maps_input(name, x, xf, map_only):
        # The backend's own mapped noise kernel at sigma 0, alpha 1 writes x_f exactly (its
        # uniforms are the stream's; 0 * eps adds nothing): native speed for the uniforms.
        launch(call.replace(out=xf, noise=None, given_noise=None, params=map_only))
    else:
        u = None
        if p.dequant:
            stream = call.rng
            if isinstance(stream, DeviceStream):
                if _capturing(x):
                    _refuse_capture("with dequantize=True on a backend whose kernels do not draw the uniforms")
                stream = read_words(stream.words)
            seed, offset = stream
            u = _reference.dequant_uniforms(seed, offset, x.numel()).reshape(x.shape).to(x.device)
        xf = _reference.input_map(x, acc, p.in_scale, p.in_shift, u).contiguous()
    pf = replace(p, in_scale=1.0, in_shift=0.0, dequant=False)
    res = out if out.dtype == acc else torch.empty_like(xf)
    eps = noise if noise is None or noise.dtype == acc else torch.empty_like(xf)
    plain = call.replace(x=xf, out=res, noise=eps, params=pf)
    if _beyond_image(backends.LIMITS[name], xf, pf):  # xf is contiguous: its dims merge
        _run_unfused(launch, plain)
    else:
        launch(plain)
    if res is not out:
        out.copy_(res)
    if noise is not None and eps is not noise:
        noise.copy_(cast(torch.Tensor, eps))


def _beyond_image(limits: backends.Limits, x: torch.Tensor, p: Params) -> bool:
    """A blur radius ``r >= min(H, W)`` on a backend whose kernels mirror once
    (``backends.Limits.any_radius``; their cost also grows with r per pixel): beyond the image
    the weights fold onto it, and the call runs unfused (:func:`_run_unfused`)."""
    return p.blur_sigma is not None and not limits.any_radius and p.max_radius >= min(x.shape[-2], x.shape[-1])


def _too_many_dims(limits: backends.Limits, x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor],
                   p: Params) -> bool:
    """More dims left after merging (x, out and noise together; for a blur, the plane dims in
    front of H, W) than the backend's kernels index (``backends.Limits``): the call runs on
    contiguous copies (:func:`_run_contiguous`), on every backend alike."""
    most = limits.max_dims if p.blur_sigma is None else limits.max_plane_dims
    if most is None or x.dim() <= most:
        return False
    from .backends._native import merged

    ts = (x, out) if noise is None else (x, out, noise)
    return len(merged(x.shape, [t.stride() for t in ts], p.blur_sigma is not None)[0]) > most


def _run_contiguous(launch, call: Call) -> None:
    """The backend's own kernel on contiguous copies (same logical order, so every element
    draws the same normal), then copied back into out (and noise). The caller's eps
    (``given_noise``), if any, is read from a contiguous copy too."""
    x, out, noise, given = call.x, call.target, call.noise, call.given_noise
    oc = torch.empty(x.shape, dtype=out.dtype, device=x.device)
    nc = None if noise is None else torch.empty(x.shape, dtype=noise.dtype, device=x.device)
    launch(call.replace(x=x.contiguous(), out=oc, noise=nc, given_noise=None if given is None else given.contiguous()))
    if noise is not None:
        noise.copy_(cast(torch.Tensor, nc))
    out.copy_(oc)


def _run_unfused(launch, call: Call) -> None:
    """The slow path of a compiled backend: blur (folded weights, any radius) into a contiguous
    temporary in the compute dtype, then the backend's noise kernel on it.

    The temporary has x's shape, so every element keeps its logical index and draws the same
    normal as in the fused kernel; ``out = alpha * B(x) + sigma * eps`` is computed in the
    compute dtype and rounded once to x.dtype (the copy into ``out``). With the caller's eps
    (``given_noise``) the noise kernel reads it instead of drawing.
    """
    x, out, noise, p = call.x, call.target, call.noise, call.resolved
    acc = compute_dtype(x.dtype)
    src = blur_planes(x, p, acc) if p.blur_sigma is not None else x.contiguous()
    res = torch.empty_like(src)
    eps = None if noise is None else torch.empty_like(src)
    launch(call.replace(x=src, out=res, noise=eps, params=p.without_blur()))
    out.copy_(res)
    if noise is not None:
        noise.copy_(cast(torch.Tensor, eps))


def _new_outputs(call: Call) -> Tuple[torch.Tensor, torch.Tensor]:
    """The functional op's results: out, and eps (empty unless ``return_noise``)."""
    x, dt = call.x, call.output_dtype
    noise = torch.empty_like(x, dtype=dt) if call.return_noise else x.new_empty(0, dtype=dt)
    return torch.empty_like(x, dtype=dt), noise


def _mollify_impl(*args) -> Tuple[torch.Tensor, torch.Tensor]:
    call = Call.from_op(args)
    out, noise = _new_outputs(call)
    _run(call.replace(out=out, noise=noise if call.return_noise else None))
    return out, noise


def _mollify_out_impl(*args) -> None:
    # x=None means "x is out" (in place); the op never receives two aliased arguments (an eps
    # that is out's own view arrives as a copy). The output dtype is out's (checked by the
    # public function).
    call = Call.from_op(args, OUT_ARGS)
    check_out_memory(call.x, cast(torch.Tensor, call.out), call.noise, call.given_noise)
    _run(call)


_mollify_op = torch.library.custom_op("mollify_fast::mollify", _mollify_impl, mutates_args=("stream",),
                                      schema=FUNCTIONAL_SCHEMA)
_mollify_out_op = torch.library.custom_op("mollify_fast::mollify_out", _mollify_out_impl,
                                          mutates_args=("out", "noise", "stream"), schema=OUT_SCHEMA)


@_mollify_op.register_fake
def _mollify_fake(*args):
    return _new_outputs(Call.from_op(args))


@_mollify_out_op.register_fake
def _mollify_out_fake(*args):
    return None


# ---- torch.func.vmap ----

def _vmap_refusal(info, what: str) -> None:
    """Raise before anything runs: vmap's randomness flag decides what a random op may do."""
    if info.randomness == "error":
        raise RuntimeError(
            "mollify: called under torch.func.vmap with randomness='error' (the default), but mollify draws "
            "random noise; pass randomness='different' to vmap (each slice its own noise), or call "
            "mollify outside vmap"
        )
    if info.randomness == "same":
        raise RuntimeError(
            "mollify: torch.func.vmap(randomness='same') is not supported (one noise draw shared by every "
            "slice); pass randomness='different', or call mollify outside vmap"
        )
    if what:
        raise RuntimeError(f"mollify: under torch.func.vmap, {what}")


def _per_row(t: Optional[Param], dim: Optional[int], b: int, n: int) -> Optional[Param]:
    """A parameter of the vmapped call as one for the merged ``[B * N, ...]`` batch."""
    if not isinstance(t, torch.Tensor) or (dim is None and t.dim() == 0):
        return t
    if dim is None:  # [N], shared by every slice
        return t.repeat(b)
    t = t.movedim(dim, 0)
    return t.repeat_interleave(n) if t.dim() == 1 else t.reshape(b * n)


def _batched(t: torch.Tensor, dim: Optional[int], b: int) -> torch.Tensor:
    """A vmapped tensor argument with its batch dim first (expanded when not batched)."""
    return t.movedim(dim, 0) if dim is not None else t.expand(b, *t.shape)


def _mollify_vmap(info, in_dims, *args):
    """randomness='different': the B slices of ``[N, ...]`` run as one ``[B * N, ...]`` batch,
    so slice ``b`` draws the stream's elements ``b * slice_numel ...`` (noise of its own) and
    the generator advances once, by the whole batch. With ``noise=`` (``given_noise``) nothing
    is drawn, so any randomness flag is fine: slice ``b`` uses its slice of a batched eps (or
    the same eps, when it is not batched)."""
    call, dims = Call.from_op(args), arg_dims(in_dims)
    if call.given_noise is None:
        _vmap_refusal(info, "the generator must not be batched" if dims["stream"] is not None else "")
    b = info.batch_size
    xb = _batched(call.x, dims["x"], b)
    n = xb.shape[1]
    merged = xb.reshape(b * n, *xb.shape[2:])
    eps = call.given_noise
    rows: Dict[str, Any] = {p: _per_row(getattr(call, p), dims[p], b, n) for p in PER_SAMPLE}
    merged_call = call.replace(
        x=merged, **rows,
        given_noise=None if eps is None else _batched(eps, dims["given_noise"], b).reshape(merged.shape))
    out, noise = torch.ops.mollify_fast.mollify(*merged_call.op_args())
    if call.return_noise:
        return (out.reshape(xb.shape), noise.reshape(xb.shape)), (0, 0)
    return (out.reshape(xb.shape), noise), (0, None)


def _mollify_out_vmap(info, in_dims, *args):
    what = "out= (and so in-place) is not supported; use the returned tensor"
    if Call.from_op(args, OUT_ARGS).given_noise is not None:  # nothing is drawn: only out= is refused
        raise RuntimeError(f"mollify: under torch.func.vmap, {what}")
    _vmap_refusal(info, what)


torch.library.register_vmap("mollify_fast::mollify", _mollify_vmap)
torch.library.register_vmap("mollify_fast::mollify_out", _mollify_out_vmap)


# ---- fast path: cached launch plans for repeated eager noise-only calls ----

_MAX_PLANS = 256  # layouts kept; a loop over more distinct shapes than this starts over
_plans: dict = {}
_MISSING = object()
_is_compiling = torch.compiler.is_compiling
_dispatch_depth = torch._C._len_torch_dispatch_stack
_function_mode = torch._C._is_torch_function_mode_enabled
_FLOAT64_MAX = 1.7976931348623157e308


def _new_plan(key: tuple, x: torch.Tensor, return_noise: bool, backend: str):
    """Build and cache the plan for ``key``: ``(name, run, run_gen, numel, limit, torch_rng)``, or None when this
    layout always takes the general path (not a float dtype, empty, more dims than the kernels
    take, a backend unavailable or not planned for x). Writes nothing but the cache."""
    plan = None
    if (x.layout is torch.strided and x.dtype in FLOAT_DTYPES and x.dim() >= 1 and x.numel() > 0 and x.device.type in ("cpu", "cuda")
            and backend in backends.NAMES):
        try:
            name, _ = backends.resolve(backend, x, _NOISE_PROBE)
            first = Call(x=x, sigma=0.5, out=torch.empty_like(x), noise=torch.empty_like(x) if return_noise else None,
                         params=_NOISE_PROBE)
            launchers = backends.noise_plan(name, first)
        except (backends.BackendUnavailableError, ValueError):
            launchers = None  # the general path raises the error at each call
        if launchers is not None:
            # Largest finite parameter: float32 compute unless x is float64 (README, "Errors and limits, in one place").
            plan = (name, launchers.run, launchers.run_gen, x.numel(),
                    _FLOAT64_MAX if x.dtype == torch.float64 else FLOAT32_MAX, backends.LIMITS[name].torch_rng)
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[key] = plan
    return plan


# A noise-only call with numbers: what the plan path asks backends.resolve and the backend's
# noise_plan about a layout.
_NOISE_PROBE = Params(sigma=0.5, alpha=0.5, blur_sigma=None, radius=0, max_radius=0)


def _scalar(v, x: torch.Tensor):
    """A Python float/int parameter as is; a 0-d real tensor on the CPU or x's device as its
    value; anything else None (the general path takes it)."""
    tv = type(v)
    if tv is float or tv is int:
        return v
    if (tv is torch.Tensor and v.dim() == 0 and v.layout is torch.strided and not v.is_complex()
            and v.dtype is not torch.bool and (v.is_cpu or v.device == x.device)):
        return v.item()
    return None


def _fast(x: torch.Tensor, sigma, alpha, generator: Optional[Generator], return_noise: bool, backend: str):
    """The plan path (module docstring); None means "take the general path" (nothing done)."""
    global _last_backend
    if x.requires_grad or x.is_neg() or _capturing(x):
        return None  # the general path refuses (or resolves the view)
    vp = alpha is None
    try:
        key = (x.shape, x.stride(), x.dtype, x.device, x.layout, vp, return_noise, backend)
        plan = _plans.get(key, _MISSING)
    except (TypeError, RuntimeError):  # an unhashable backend, a sparse x: the general path names the problem
        return None
    if plan is _MISSING:
        plan = _new_plan(key, x, return_noise, backend)
    if plan is None:
        return None
    name, run, run_gen, numel, limit, torch_rng = plan
    s = sigma if type(sigma) is float else _scalar(sigma, x)
    if s is None:
        return None
    if vp:
        # One chained comparison per number: False for NaN, +-inf and out-of-range values alike.
        if not 0.0 <= s <= 1.0:
            return None
        a = math.sqrt(1.0 - s * s)
    else:
        a = _scalar(alpha, x)
        if a is None or not (0.0 <= s <= limit and -limit <= a <= limit):
            return None
        if type(a) is not float:
            a = float(a)  # an int in range
    if type(s) is not float:  # the training loop's float needs no conversion call
        s = float(s)
    out = torch.empty_like(x)
    noise = torch.empty_like(x) if return_noise else None
    if generator is not None:
        # No checkpoint around the call: cpu and cuda take the stream inside the launch call.
        if run_gen is not None and replay_untracked() and run_gen(x, out, noise, s, a, generator._state.data_ptr(),
                                                                  default_group):
            _last_backend = name
            return (out, noise) if return_noise else out
        if generator._words is not None:
            return None  # device-resident: the general path reads it on the device
        stream = take_replayable(generator._state, numel)
    elif torch_rng:
        stream = None
    else:
        stream = (draw_default_seed(x.device), 0)
    _last_backend = name
    run(x, out, noise, s, a, stream)
    return (out, noise) if return_noise else out


_functorch_active = torch._C._are_functorch_transforms_active
_tracing_state = torch._C._get_tracing_state
_DEFAULT_TORCH_FUNCTION = torch.Tensor.__torch_function__.__func__  # type: ignore[attr-defined]  # a classmethod (torch's stubs: a callable)
_DEFAULT_TORCH_DISPATCH = torch.Tensor.__torch_dispatch__


def _no_machinery() -> bool:
    """True outside the compiler, modes, torch.func transforms and jit.trace: where the plan
    path may run (the tensor's own checks are :func:`_fast`'s)."""
    return (not _is_compiling() and _dispatch_depth() == 0 and not _function_mode() and not _functorch_active()
            and _tracing_state() is None)


def _wrapper_subclass(x) -> bool:
    """True for a tensor subclass that only types a tensor: no ``__torch_dispatch__`` of its own
    and the default ``__torch_function__`` or torchvision's tv_tensors one. Others (a subclass
    with its own dispatch or function logic, ``nn.Parameter``) take the custom op, which runs
    their logic."""
    cls = type(x)
    if not isinstance(x, torch.Tensor) or getattr(cls, "__torch_dispatch__", None) is not _DEFAULT_TORCH_DISPATCH:
        return False
    tf = getattr(getattr(cls, "__torch_function__", None), "__func__", None)
    return tf is _DEFAULT_TORCH_FUNCTION or getattr(tf, "__module__", "").startswith("torchvision.tv_tensors")


def _plain_eager(x: torch.Tensor) -> bool:
    """True for a plain tensor in eager mode: no compiler, no fake tensor, no mode on the stack,
    no torch.func transform (its tensors have no storage for the kernels' raw pointers), no
    jit.trace (which sees only dispatched ops), not on the meta device (the op's fake
    implementation gives the shape-only result there, and no stream is taken)."""
    return type(x) is torch.Tensor and _no_machinery() and not x.is_meta


@overload
def mollify(x: torch.Tensor, sigma: ParamLike, *, alpha: Optional[ParamLike] = ..., blur_sigma: Optional[ParamLike] = ...,
            blur_radius: Optional[int] = ..., generator: Optional[Generator] = ..., out: Optional[torch.Tensor] = ...,
            return_noise: Literal[False] = ..., noise: Optional[torch.Tensor] = ...,
            input_scale: Optional[Number] = ..., input_shift: Number = ...,
            dequantize: bool = ..., out_dtype: Optional[torch.dtype] = ..., backend: str = ...) -> torch.Tensor: ...
@overload
def mollify(x: torch.Tensor, sigma: ParamLike, *, alpha: Optional[ParamLike] = ..., blur_sigma: Optional[ParamLike] = ...,
            blur_radius: Optional[int] = ..., generator: Optional[Generator] = ..., out: Optional[torch.Tensor] = ...,
            return_noise: Literal[True], noise: Optional[torch.Tensor] = ...,
            input_scale: Optional[Number] = ..., input_shift: Number = ...,
            dequantize: bool = ..., out_dtype: Optional[torch.dtype] = ..., backend: str = ...) -> Tuple[torch.Tensor, torch.Tensor]: ...
@overload
def mollify(x: torch.Tensor, sigma: ParamLike, *, alpha: Optional[ParamLike] = ..., blur_sigma: Optional[ParamLike] = ...,
            blur_radius: Optional[int] = ..., generator: Optional[Generator] = ..., out: Optional[torch.Tensor] = ...,
            return_noise: bool = ..., noise: Optional[torch.Tensor] = ...,
            input_scale: Optional[Number] = ..., input_shift: Number = ...,
            dequantize: bool = ..., out_dtype: Optional[torch.dtype] = ..., backend: str = ...) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]: ...
def mollify(
    x: torch.Tensor,
    sigma: ParamLike,
    *,
    alpha: Optional[ParamLike] = None,
    blur_sigma: Optional[ParamLike] = None,
    blur_radius: Optional[int] = None,
    generator: Optional[Generator] = None,
    out: Optional[torch.Tensor] = None,
    return_noise: bool = False,
    noise: Optional[torch.Tensor] = None,
    input_scale: Optional[Number] = None,
    input_shift: Number = 0.0,
    dequantize: bool = False,
    out_dtype: Optional[torch.dtype] = None,
    backend: str = "auto",
):
    r"""Mollify a batch: ``out = alpha * B(x_f) + sigma * eps`` in one fused pass.

    .. math::

        \mathrm{out}_i = \alpha_{n(i)}\,(B x_f)_i + \sigma_{n(i)}\,\varepsilon_i,
        \qquad \varepsilon_i \sim \mathcal N(0, 1),

    where ``n(i)`` is the sample (dim-0 index) of element ``i``, ``B`` is a Gaussian blur
    of the last two dims (identity when ``blur_sigma`` is None or 0) and
    ``x_f = (x + u) * input_scale + input_shift`` is the input map (``x_f = x`` by default for
    floating x; ``u`` the dequantisation uniform, 0 unless ``dequantize``).

    Args:
        x: ``[N, ...]`` uint8/float16/bfloat16/float32/float64 tensor, any strides. Must not
            require grad (the op is autograd-free; pass ``x.detach()``).
        sigma: noise scale: a Python or numpy number (a Python float may change every call
            under ``torch.compile``: no recompile), a 0-d tensor or ndarray, or one value per
            sample as ``[N]`` or ``[N, 1, ..., 1]`` (a tensor on x's device or the CPU, or an
            ndarray). ``>= 0``, finite, and within float32's range unless x is float64.
        alpha: signal scale, same forms. ``None`` (variance preserving) means
            ``sqrt(1 - sigma^2)`` and needs ``sigma <= 1``; pass it for DDPM
            (``alpha = sqrt(abar_t)``) or NCSN (``alpha = 1``) noising.
        blur_sigma: Gaussian blur standard deviation in pixels (same forms, ``>= 0``), over
            the last two dims with mirrored borders; needs ``x.dim() >= 3`` (``[N, ..., H, W]``:
            dim 0 is the batch; pass ``x[None]`` for a single image).
        blur_radius: taps on each side; default ``ceil(3 * blur_sigma)`` per sample. At most
            ``MAX_BLUR_RADIUS`` (2**20). Radii ``>= min(H, W)`` fold the weights onto the
            mirrored image (exact) and run unfused: a blur pass, then the noise kernel.
        generator: a :class:`mollify_fast.Generator` stream, advanced by ``ceil(numel / 4)``
            (twice that with ``dequantize``, nothing with ``noise``). None draws a seed from
            PyTorch's default generator for x's device.
        out: tensor to write (x's shape and device, the output dtype); may be ``x`` itself
            when that has the output dtype (never a uint8 x).
        return_noise: also return ``eps`` (rounded to the output dtype). With ``noise``, a new
            tensor holding ``noise`` rounded to the output dtype (never the caller's tensor itself).
        noise: your own ``eps`` instead of a draw (offset or pyramid noise, one eps shared by
            two models): x's shape, on x's device, float16/bfloat16/float32/float64 in any
            strides (``e.expand_as(x)`` included; it is only read), not requiring grad. Used
            in the compute dtype (a float32 eps with bfloat16 x keeps its float32 values), read
            in the same fused pass; no generator moves (``generator`` and PyTorch's default
            generator alike). ``out`` may be ``noise`` itself, not a partial overlap of it.
            Not with ``dequantize`` (whose uniforms come from the stream).
        input_scale: a finite Python or numpy number; default 1 for floating x, 1/255 for
            uint8 (to [0, 1]), 1/256 for uint8 with ``dequantize`` (to [0, 1)). Under
            ``torch.compile`` it and ``input_shift`` are specialised (constants: a new value
            recompiles).
        input_shift: a finite Python or numpy number added after the scale (e.g.
            ``input_scale=2/255, input_shift=-1`` maps uint8 images to [-1, 1]).
        dequantize: add ``u ~ U[0, 1)`` per element before the scale (the flows'
            dequantisation), drawn from the stream after the normals: the call takes
            ``2 * ceil(numel / 4)`` counter groups (README, "The noise stream").
        out_dtype: the output dtype, any floating dtype; default x.dtype for floating x,
            float32 for uint8.
        backend: ``"auto"``, ``"torch"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or
            ``"reference"``.

    Returns:
        ``out`` (x's shape, the output dtype; a new tensor with x's layout unless ``out`` is
        given), or ``(out, eps)`` when ``return_noise``.

    The arithmetic, the input map included, is float32 (float64 when x or the output dtype is
    float64), rounded once to the output dtype. Every
    backend but ``torch`` draws ``eps`` from the same Philox stream, so for one generator
    state they agree to float32 rounding on CPU and GPU alike.
    """
    if (blur_sigma is None and blur_radius is None and out is None and noise is None and type(x) is torch.Tensor
            and input_scale is None and dequantize is False and out_dtype is None
            and type(input_shift) is float and input_shift == 0.0
            and (generator is None or type(generator) is Generator) and (return_noise is False or return_noise is True)
            and _no_machinery()):
        res = _fast(x, sigma, alpha, generator, return_noise, backend)
        if res is not None:
            return res
    if type(x) is not torch.Tensor and _wrapper_subclass(x) and not _is_compiling():
        # An image batch typed as a subclass (torchvision's tv_tensors.Image, a plain
        # ``class MyBatch(torch.Tensor)``): run on the plain tensor (the fast path included) and
        # hand back x's type; through the custom op it would cost the op dispatch and come back
        # as a plain Tensor.
        cls = type(x)
        res = mollify(x.as_subclass(torch.Tensor), sigma, alpha=alpha, blur_sigma=blur_sigma,
                      blur_radius=blur_radius, generator=generator,
                      out=None if out is None else out.as_subclass(torch.Tensor),
                      return_noise=return_noise,
                      noise=noise.as_subclass(torch.Tensor) if isinstance(noise, torch.Tensor) else noise,
                      input_scale=input_scale, input_shift=input_shift,
                      dequantize=dequantize, out_dtype=out_dtype, backend=backend)
        if return_noise:
            return (res[0].as_subclass(cls) if out is None else out), res[1].as_subclass(cls)
        return cast(torch.Tensor, res).as_subclass(cls) if out is None else out
    check_x(x)
    in_scale, in_shift, dequantize, out_dtype = check_input_map(x, input_scale, input_shift, dequantize, out_dtype)
    call = check_static(x, dict(sigma=sigma, alpha=alpha, blur_sigma=blur_sigma), blur_radius, generator, out,
                        return_noise, backend, backends.NAMES, out_dtype, noise, (in_scale, in_shift, dequantize))
    if _plain_eager(x):
        # Same implementation as the custom ops, minus their Python dispatch (which costs more
        # than the rest of a small call); tracing, fake tensors and modes take the ops below.
        eps = torch.empty_like(x, dtype=out_dtype) if return_noise else None
        if out is None:
            res = torch.empty_like(x, dtype=out_dtype)
            _run(call.replace(out=res, noise=eps))
            return (res, eps) if return_noise else res
        check_out_memory(x, out, eps, noise)
        _run(call.replace(noise=eps))
        # The kernels write through raw pointers: tell autograd that out (maybe x) changed, so a
        # backward that saved it raises "modified by an inplace operation" instead of using the
        # mollified values. (The custom op below does this itself for its mutated arguments.)
        _increment_version(out)
        return (out, eps) if return_noise else out
    if out is None:
        res, eps = torch.ops.mollify_fast.mollify(*call.op_args())
        return (res, eps) if return_noise else res
    eps = torch.empty_like(x, dtype=out_dtype) if return_noise else None
    compiling = torch.compiler.is_compiling()
    inplace = out is x or (not compiling and same_view(out, x))
    if noise is not None and (noise is out or (not compiling and same_view(noise, out))):
        noise = noise.clone()  # out=noise: the op takes no two aliased arguments; same numbers
    torch.ops.mollify_fast.mollify_out(*call.replace(noise=eps, given_noise=noise).out_op_args(inplace))
    return (out, eps) if return_noise else out

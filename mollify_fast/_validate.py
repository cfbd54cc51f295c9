"""Argument checking for ``mollify`` (see README, "Errors and limits, in one place").

Two stages, both before anything is written:

* :func:`check_static` runs in the public function and uses only types, shapes, dtypes and
  devices, so it is traceable by ``torch.compile``: a Python number there may be a SymFloat
  whose value the compiler must not look at (a value test would crash or recompile per value).
* :func:`kernel_params` runs inside the custom op's eager implementation, with real values in
  eager and compiled mode alike, and checks the *values* of every parameter (finite, in range,
  representable in the compute dtype, blur radius within :data:`MAX_BLUR_RADIUS`), then puts
  them in the form the kernels take (:class:`Params`). It runs before any stream is taken.
"""
from __future__ import annotations

import math
import numbers
import struct
from dataclasses import replace
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ._blur import MAX_BLUR_RADIUS
from ._call import PER_SAMPLE, PER_SAMPLE_RULES, Call, Param, Params

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT32_MAX = 3.4028234663852886e38
_SYM = (torch.SymFloat, torch.SymInt)

def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic dtype: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_layout(t: torch.Tensor, name: str) -> None:
    if t.layout is not torch.strided:
        raise TypeError(
            f"mollify: {name} must be a dense (strided) tensor, got layout {t.layout}; pass {name}.to_dense()"
        )


def check_x(x, name: str = "x") -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"mollify: {name} must be a torch.Tensor, got {type(x).__name__}")
    _check_layout(x, name)
    if x.dtype not in FLOAT_DTYPES and x.dtype != torch.uint8:
        raise TypeError(
            f"mollify: {name} must be uint8, float16, bfloat16, float32 or float64, got {x.dtype}; "
            f"convert it first, e.g. {name}.float()"
        )
    if x.dim() < 1:
        raise ValueError(f"mollify: {name} must have at least 1 dim (dim 0 is the batch), got a 0-d tensor")
    if x.requires_grad:
        raise RuntimeError(
            f"mollify: {name} requires grad, but mollify is autograd-free (the noise is data "
            f"augmentation, not a learnable map); pass {name}.detach()"
        )


def _number(name: str, v) -> float:
    """A Python or numpy number, or a 0-d ndarray, as a float (no value checks here)."""
    try:
        return float(v)
    except OverflowError:
        raise ValueError(
            f"mollify: {name} must be finite, got an int too large for a float64 ({len(str(abs(int(v))))} digits)"
        ) from None


def as_param(name: str, v, x: torch.Tensor, compiling: bool = False) -> Param:
    """A parameter as a float or a 0-d or ``[N]`` tensor; checks type, shape, device.

    Accepted: Python/numpy numbers (any float dtype), 0-d ndarrays and tensors, and per-sample
    tensors or ndarrays of shape ``[N]`` or ``[N, 1, ..., 1]`` (rank <= x.dim(), N = x.shape[0]).
    Values are checked later, by :func:`kernel_params`.

    ``compiling``: under ``torch.compile`` a Python number becomes a 0-d float64 tensor computed
    in the graph (``zeros(()) + v``). Passed to the custom op as a ``float`` it would be
    specialised: one recompile per value; as a tensor the graph stays the same and the op reads
    the value when it runs (measured on CPU, inductor and aot_eager: 2 compiles for 10 floats).
    """
    tv = type(v)
    if tv is float or tv is int or isinstance(v, _SYM):  # the common case first: no ABC isinstance
        if compiling:
            # ``0 + v`` rather than ``torch.full((), v)``: Dynamo turns a float argument into a
            # tensor input of the graph only where every use of it is tensor arithmetic; a
            # factory call such as ``full`` specialises it (one compile per value, inductor
            # and aot_eager alike, until the recompile limit fails a fullgraph step).
            return torch.zeros((), dtype=torch.float64) + v
        return _number(name, v)
    if tv.__module__ == "numpy" and hasattr(v, "ndim") and tv.__name__ == "ndarray" and v.ndim > 0:
        if v.dtype.kind not in "fiu":
            raise TypeError(f"mollify: {name} must hold real numbers, got a numpy array of {v.dtype}")
        if v.dtype.kind == "f" and v.dtype.itemsize > 8:
            v = v.astype("float64")  # longdouble: torch has no such dtype
        if any(st < 0 for st in v.strides):
            v = v.copy()  # a reversed view (a[::-1]): torch takes no negative strides
        v = torch.as_tensor(v)
    elif not torch.is_tensor(v):
        if isinstance(v, (bool,)) or not (isinstance(v, numbers.Real) or _is_0d_ndarray(v)):
            raise TypeError(
                f"mollify: {name} must be a number, a 0-d tensor or a per-sample tensor of shape [N] or "
                f"[N, 1, ..., 1] (N = x.shape[0]), got {type(v).__name__}"
            )
        return _number(name, v)
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"mollify: {name} must hold real numbers, got {v.dtype}")
    if v.dim() > 0:
        n = x.shape[0]
        if v.dim() > max(x.dim(), 1):
            raise ValueError(
                f"mollify: {name} has rank {v.dim()} (shape {tuple(v.shape)}), more than x's rank {x.dim()}; "
                f"pass one value per sample as [N] or [N, 1, ..., 1] with N = x.shape[0] = {n}"
            )
        if any(d != 1 for d in v.shape[1:]):
            raise ValueError(
                f"mollify: {name} must be one value per sample, shape [N] or [N, 1, ..., 1] with N = "
                f"x.shape[0] = {n}, got shape {tuple(v.shape)} (a {v.dim()}-D tensor)"
            )
        if v.shape[0] != n:
            raise ValueError(
                f"mollify: {name} has one value per sample, so its length must be x.shape[0]="
                f"{n}, got {v.shape[0]} (shape {tuple(v.shape)})"
            )
        if v.dim() > 1:
            v = v.reshape(n)
    if v.device.type != "cpu" and v.device != x.device:
        raise ValueError(
            f"mollify: {name} is on {v.device} but x is on {x.device}; move it with "
            f"{name}.to(x.device) (or keep it on the CPU)"
        )
    return v.detach()


def _is_0d_ndarray(v) -> bool:
    return type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0 and getattr(v.dtype, "kind", "") in "fiu"


def check_noise(x: torch.Tensor, noise) -> None:
    """The caller's eps (``noise=``): a dense floating tensor of x's shape on x's device, not
    requiring grad. Any float dtype and any strides (it is only read)."""
    if not torch.is_tensor(noise):
        raise TypeError(
            f"mollify: noise must be a torch.Tensor (the eps to use instead of drawing one) or None, got "
            f"{type(noise).__name__}"
        )
    _check_layout(noise, "noise")
    if noise.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"mollify: noise must be float16, bfloat16, float32 or float64, got {noise.dtype}; convert it "
            "first, e.g. noise.float()"
        )
    if noise.shape != x.shape:
        raise ValueError(
            f"mollify: noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}; for an eps that "
            "broadcasts (e.g. one per channel), pass noise.expand_as(x)"
        )
    if noise.device != x.device:
        raise ValueError(f"mollify: noise is on {noise.device} but x is on {x.device}; move it with noise.to(x.device)")
    if noise.requires_grad:
        raise RuntimeError(
            "mollify: noise requires grad, but mollify is autograd-free (the noise is data augmentation, not a "
            "learnable map); pass noise.detach()"
        )


def check_static(x, values: Dict[str, Any], blur_radius, generator, out, return_noise, backend, names,
                 out_dtype: Optional[torch.dtype] = None, noise=None,
                 input_map: Tuple[float, float, bool] = (1.0, 0.0, False)) -> Call:
    """Type/shape/device checks; returns the call's record. Raises before any write.
    ``values``: the per-sample parameters by name (``_call.PER_SAMPLE``; None or absent: not
    given). ``out_dtype``: the output dtype (:func:`check_input_map`); None means x.dtype. ``noise``:
    the caller's eps (:func:`check_noise`). ``input_map``: ``(input_scale, input_shift,
    dequantize)`` as :func:`check_input_map` returns them."""
    from .generator import Generator

    check_x(x)
    if not isinstance(backend, str) or backend not in names:
        raise ValueError(f"mollify: unknown backend {backend!r}; choose one of {', '.join(names)}")
    if not isinstance(return_noise, bool):
        raise TypeError(f"mollify: return_noise must be a bool, got {type(return_noise).__name__}")
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(
            "mollify: generator must be a mollify_fast.Generator (a Philox stream shared by every "
            f"backend) or None, got {type(generator).__name__}"
        )
    compiling = torch.compiler.is_compiling()
    blur_sigma = values.get("blur_sigma")
    if blur_sigma is not None and x.dim() < 3:
        raise ValueError(
            f"mollify: blur needs x with at least 3 dims [N, ..., H, W] (dim 0 is the batch), got shape "
            f"{tuple(x.shape)}; for a single image pass x[None], and do not blur an [N, D] batch "
            "(it would mix samples)"
        )
    params: Dict[str, Any] = {}
    for rule in PER_SAMPLE_RULES:
        v = values.get(rule.name)
        params[rule.name] = as_param(rule.name, v, x, compiling) if rule.required or v is not None else None
    if blur_radius is not None:
        if isinstance(blur_radius, bool) or not isinstance(blur_radius, (int, torch.SymInt)):
            raise TypeError(f"mollify: blur_radius must be an int or None, got {type(blur_radius).__name__}")
        if type(blur_radius) is int:  # a traced SymInt is checked inside the op
            if blur_radius < 0:
                raise ValueError(f"mollify: blur_radius must be >= 0, got {blur_radius}")
            if blur_radius > MAX_BLUR_RADIUS:
                raise _radius_too_large(f"blur_radius={blur_radius}")
        if blur_sigma is None:
            raise ValueError("mollify: blur_radius was given without blur_sigma; pass blur_sigma too")
    if noise is not None:
        check_noise(x, noise)
        if input_map[2]:
            raise ValueError(
                "mollify: noise= cannot be combined with dequantize=True: the dequantisation uniforms come from the "
                "generator's stream, and a call with noise= draws nothing; add your own uniforms to x (x.float() + u) "
                "and pass dequantize=False, or drop noise="
            )
    if out is not None:
        if not torch.is_tensor(out):
            raise TypeError(f"mollify: out must be a torch.Tensor, got {type(out).__name__}")
        _check_layout(out, "out")
        want = x.dtype if out_dtype is None else out_dtype
        if out.dtype != want:
            raise _out_dtype_error(x, out, want)
        if out.shape != x.shape:
            raise ValueError(f"mollify: out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
        if out.device != x.device:
            raise ValueError(f"mollify: out must be on x's device {x.device}, got {out.device}")
        if out.requires_grad:
            raise RuntimeError("mollify: out requires grad; mollify is autograd-free, pass out.detach()")
        if out.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError(
                "mollify: out is an inference tensor, and an in-place update to an inference tensor outside "
                "InferenceMode is not allowed; call mollify inside torch.inference_mode(), or pass a "
                "normal tensor as out (e.g. out=x.clone())"
            )
    # A device-resident stream travels as its words (an int64 [2] tensor on its device, mutated by
    # the op): inside a compiled graph the op then mutates no CPU tensor, which would keep it out
    # of a CUDA graph (README, "CUDA graphs").
    stream = None if generator is None else generator._words if generator._words is not None else generator._state
    return Call(x=x, **params, blur_radius=blur_radius, stream=stream, backend=backend,
                input_scale=input_map[0], input_shift=input_map[1], dequantize=input_map[2], out=out,
                out_dtype=out_dtype, return_noise=return_noise, given_noise=noise)


def default_out_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """The output dtype when ``out_dtype`` is None: x.dtype for floating x, float32 for uint8."""
    return torch.float32 if x_dtype == torch.uint8 else x_dtype


def map_compute_dtype(x_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.dtype:
    """The arithmetic dtype of a call: float64 when x or the output is float64, else float32."""
    return torch.float64 if torch.float64 in (x_dtype, out_dtype) else torch.float32


def _map_number(name: str, v) -> float:
    """``input_scale``/``input_shift``: a Python or numpy real number (or 0-d ndarray), as a float."""
    if isinstance(v, _SYM):
        return v  # type: ignore[return-value]  # traced: a SymFloat stands for the float, checked inside the op
    if isinstance(v, bool) or not (isinstance(v, numbers.Real) or _is_0d_ndarray(v)):
        raise TypeError(f"mollify: {name} must be a Python or numpy number, got {type(v).__name__}"
                        + ("; pass its value with .item()" if torch.is_tensor(v) else ""))
    return _number(name, v)


def check_input_map(x: torch.Tensor, input_scale, input_shift, dequantize, out_dtype
                    ) -> Tuple[float, float, bool, torch.dtype]:
    """Types of the input map's arguments (README, "The contract, in short"); returns
    ``(input_scale, input_shift, dequantize, out_dtype)`` with the defaults filled in. Their
    values (finite) are checked by :func:`check_map_values`, inside the op."""
    if not isinstance(dequantize, bool):
        raise TypeError(f"mollify: dequantize must be a bool, got {type(dequantize).__name__}")
    if out_dtype is None:
        out_dtype = default_out_dtype(x.dtype)
    elif not isinstance(out_dtype, torch.dtype) or out_dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"mollify: out_dtype must be None or a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {out_dtype}"
        )
    if input_scale is None:
        from .reference import default_input_scale

        scale = default_input_scale(x.dtype, dequantize)
    else:
        scale = _map_number("input_scale", input_scale)
    return scale, _map_number("input_shift", input_shift), dequantize, out_dtype


def check_map_values(input_scale: float, input_shift: float, acc: torch.dtype) -> None:
    """The input map's values: finite and representable in the compute dtype ``acc``."""
    for name, v in (("input_scale", input_scale), ("input_shift", input_shift)):
        if not math.isfinite(v):
            raise ValueError(f"mollify: {name} must be finite, got {v}")
        if abs(v) > _limit(acc):
            raise ValueError(f"mollify: {name}={v:.4g} does not fit in float32, the compute dtype "
                             f"(|{name}| <= {FLOAT32_MAX:.4g}); use out_dtype=torch.float64")


def _out_dtype_error(x: torch.Tensor, out: torch.Tensor, out_dtype: torch.dtype) -> TypeError:
    if out_dtype == x.dtype:
        return TypeError(f"mollify: out must have x's dtype {x.dtype}, got {out.dtype}")
    why = ""
    if x.dtype == torch.uint8 and out is x:
        why = " (a uint8 x cannot be its own out: the result is floating; pass a float tensor as out)"
    return TypeError(f"mollify: out must have the output dtype out_dtype={out_dtype} (for {x.dtype} x), "
                     f"got {out.dtype}{why}")


def _extent(t: torch.Tensor) -> Tuple[int, int]:
    lo = hi = t.data_ptr()
    for size, stride in zip(t.shape, t.stride()):
        span = (size - 1) * stride * t.element_size()
        if span >= 0:
            hi += span
        else:
            lo += span
    return lo, hi + t.element_size()


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _element_offsets(t: torch.Tensor) -> torch.Tensor:
    """Storage offsets (in elements, from t's data pointer) of every element of t: int64 [numel]."""
    off = torch.zeros((), dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride()):
        off = off[..., None] + torch.arange(size, dtype=torch.int64) * stride
    return off.reshape(-1)


def shares_elements(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if views ``a`` and ``b`` (same dtype) have an element in common, exactly.

    Cheap tests first: disjoint byte extents; then residues: every element of ``a`` sits at
    ``ptr_a + e * (sum i_k s_k)``, so all of them are congruent to ``ptr_a`` modulo ``e * g_a``
    (``g_a`` the gcd of a's strides); if ``ptr_a - ptr_b`` is not a multiple of ``e * gcd(g_a,
    g_b)`` they never meet (``x = buf[0::2], out = buf[1::2]``). Otherwise the element sets
    are compared (O(numel) int64 memory: only for views that interleave in a way the gcd
    cannot separate).
    """
    (alo, ahi), (blo, bhi) = _extent(a), _extent(b)
    if not (alo < bhi and blo < ahi):
        return False
    if a.element_size() != b.element_size():
        return True  # a uint8 x and a float out of one buffer: any overlap of their bytes counts
    e = a.element_size()
    d = a.data_ptr() - b.data_ptr()
    g = 0
    for t in (a, b):
        for size, stride in zip(t.shape, t.stride()):
            if size > 1:
                g = math.gcd(g, abs(stride))
    if d % e:
        return True  # misaligned views of one buffer: treat any extent overlap as overlap
    if g and (d // e) % g:
        return False
    oa = _element_offsets(a) + d // e
    ob = _element_offsets(b)
    return bool(torch.isin(oa, ob).any())


def check_out_memory(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor],
                     eps: Optional[torch.Tensor] = None) -> None:
    """Refuse ``out`` that shares elements with ``x``, the returned ``noise`` or the caller's
    ``eps`` (``noise=``) without being the same view, or that overlaps itself. Disjoint
    interleaved views of one buffer are fine, and so is ``out`` being exactly eps's view (every
    element's eps is read before its output is written)."""
    if out.numel() == 0:
        return
    if torch._debug_has_internal_overlap(out) == 1:
        raise ValueError(
            "mollify: out has overlapping elements (e.g. from expand()); pass a dense tensor, "
            "e.g. out.contiguous()"
        )
    pairs = [("x", x)] + ([("noise", noise)] if noise is not None else [])
    for name, t in pairs:
        if t is None or t.untyped_storage().data_ptr() != out.untyped_storage().data_ptr():
            continue
        if name == "x" and same_view(t, out):
            continue  # exact in-place
        if shares_elements(t, out):
            raise ValueError(
                f"mollify: out partially overlaps {name}; pass out=x for in-place, or a separate buffer"
            )
    if eps is not None and eps.numel() and eps.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
        if eps.dtype == out.dtype and same_view(eps, out):
            return  # out=noise: the result replaces the eps, element by element
        (alo, ahi), (blo, bhi) = _extent(eps), _extent(out)
        if eps.dtype != out.dtype and alo < bhi and blo < ahi or eps.dtype == out.dtype and shares_elements(eps, out):
            raise ValueError(
                "mollify: out partially overlaps noise (the eps given with noise=); pass a separate out, or "
                "out=noise itself (the same view and dtype) to write the result over the eps"
            )


def _limit(acc: torch.dtype) -> float:
    return FLOAT32_MAX if acc == torch.float32 else math.inf


def _fits(name: str, lo: float, hi: float, acc: torch.dtype, x_dtype: torch.dtype) -> None:
    """``lo``/``hi``: the smallest and largest value of a checked-finite parameter."""
    if max(-lo, hi) > _limit(acc):
        bad = hi if hi > -lo else lo
        raise ValueError(
            f"mollify: {name}={bad:.4g} does not fit in float32, the compute dtype for {x_dtype} input "
            f"(|{name}| <= {FLOAT32_MAX:.4g}); scale the data instead, or use float64 x"
        )


def _check_number(name: str, v: float, acc: torch.dtype, x_dtype: torch.dtype) -> None:
    if not math.isfinite(v):
        raise ValueError(f"mollify: {name} must be finite, got {v}")
    _fits(name, v, v, acc, x_dtype)


def _tensor_values(name: str, t: torch.Tensor, acc: torch.dtype, x_dtype: torch.dtype) -> torch.Tensor:
    """float64 CPU copy of a 0-d/[N] parameter, checked finite and representable (one device sync at most)."""
    v = t.to("cpu", torch.float64)
    if v.numel() == 0:
        return v
    if not bool(torch.isfinite(v).all()):
        bad = v[~torch.isfinite(v)].reshape(-1)[0].item()
        raise ValueError(f"mollify: {name} must be finite, got {bad}")
    _fits(name, float(v.min()), float(v.max()), acc, x_dtype)
    return v


def _radius_too_large(what: str) -> ValueError:
    return ValueError(
        f"mollify: {what} is above the largest blur radius, {MAX_BLUR_RADIUS} (2**20): every call computes "
        f"2r+1 Gaussian weights per distinct blur_sigma, and a radius that large already blurs any image "
        f"side below {MAX_BLUR_RADIUS} pixels to its mean; pass a smaller blur_sigma or blur_radius"
    )


def resolve_params(x: torch.Tensor, sigma: Param, alpha: Optional[Param] = None, blur_sigma: Optional[Param] = None,
                   blur_radius: Optional[int] = None) -> Params:
    """:func:`kernel_params` of a call given by its parameters (for tools and tests that plan a
    launch without mollify, e.g. benchmarks/sass/report.py)."""
    return kernel_params(x, Call(x=x, sigma=sigma, alpha=alpha, blur_sigma=blur_sigma, blur_radius=blur_radius))


def kernel_params(x: torch.Tensor, call: Call) -> Params:
    """Value checks of every parameter (README, "Errors and limits, in one place"), then
    conversion to :class:`Params`. ``x``: the tensor whose dtype gives the compute dtype.

    Every per-sample parameter by its rule (``_call.PER_SAMPLE_RULES``: finite, within the
    compute dtype, at least its minimum); then what the parameters mean together: sigma <= 1
    when alpha is None (alpha = sqrt(1 - sigma^2)), and the blur radius. Runs with real values
    (eager, or inside the custom op when compiled) and before any stream is taken, so a refusal
    changes nothing.
    """
    if x.is_cuda and any(isinstance(getattr(call, n), torch.Tensor) for n in PER_SAMPLE) \
            and torch.cuda.is_current_stream_capturing():
        return _captured_params(x, call)
    acc = compute_dtype(x.dtype)
    xd = x.dtype
    blur_radius = call.blur_radius
    if call.blur_sigma is not None and blur_radius is not None:
        if blur_radius > MAX_BLUR_RADIUS:
            raise _radius_too_large(f"blur_radius={blur_radius}")
        if blur_radius < 0:
            raise ValueError(f"mollify: blur_radius must be >= 0, got {blur_radius}")

    def kernel_form(v64: torch.Tensor, src: torch.Tensor) -> Param:
        # A checked tensor parameter as the kernels take it: its number (0-d), else [N] in the
        # compute dtype on x's device.
        if v64.dim() == 0:
            return float(v64)
        return src.to(x.device, acc).contiguous()

    kernel: Dict[str, Any] = {}
    host: Dict[str, torch.Tensor] = {}  # the float64 CPU values of each tensor parameter
    highest: Dict[str, float] = {}
    for rule in PER_SAMPLE_RULES:
        name, v = rule.name, getattr(call, rule.name)
        if v is None:
            kernel[name] = None
            continue
        if isinstance(v, torch.Tensor):
            v64 = host[name] = _tensor_values(name, v, acc, xd)
            kernel[name] = kernel_form(v64, v)
            if not v64.numel():
                continue  # no values to range-check
            lo, hi = float(v64.min()), float(v64.max())
        else:
            _check_number(name, v, acc, xd)
            lo = hi = kernel[name] = v
        if rule.minimum is not None and lo < rule.minimum:
            raise ValueError(f"mollify: {name} must be >= {rule.minimum:g}, got {lo}")
        highest[name] = hi
    if call.alpha is None:  # variance preserving
        if highest.get("sigma", 0.0) > 1:
            raise ValueError(
                f"mollify: sigma must be <= 1 when alpha is None (alpha = sqrt(1 - sigma^2)), got "
                f"{highest['sigma']}; pass alpha explicitly for DDPM/NCSN-style noising"
            )
        if "sigma" in host:
            a64 = torch.sqrt(1.0 - host["sigma"] * host["sigma"])
            kernel["alpha"] = kernel_form(a64, a64)
        else:
            kernel["alpha"] = math.sqrt(1.0 - kernel["sigma"] * kernel["sigma"])

    b_val = kernel["blur_sigma"]
    radius: Union[int, torch.Tensor] = 0
    max_radius = 0
    blur_sigma_host = radius_host = None
    if b_val is not None:
        if not torch.is_tensor(b_val) and acc != torch.float64:
            # The value the kernels get (the compute dtype), so that the radius ceil(3 s) and the
            # weights are those of a per-sample tensor: 1/3 as a float, a 0-d or a [1] tensor
            # blur alike (radius 2: 3 * fl32(1/3) > 1).
            b_val = struct.unpack("f", struct.pack("f", b_val))[0]
        if torch.is_tensor(b_val):
            # Radii from the float64 view of the values the kernels get (compute dtype), so that
            # every backend derives the same integer radius.
            blur_sigma_host = host["blur_sigma"].to(acc).to(torch.float64)  # the values the kernels get
            r: Union[torch.Tensor, int]
            if blur_radius is not None:
                r = torch.full(blur_sigma_host.shape, blur_radius, dtype=torch.float64)
            else:
                r = torch.ceil(3.0 * blur_sigma_host)
            max_radius = int(r.max()) if r.numel() else 0
            if max_radius > MAX_BLUR_RADIUS:
                raise _radius_too_large(f"blur_sigma={float(blur_sigma_host.max()):.4g} (radius ceil(3 * blur_sigma))")
            radius_host = r.to(torch.int64)
            radius = r.to(torch.int32).to(x.device)
        elif blur_radius is not None:
            radius = max_radius = blur_radius
        else:
            r_num = math.ceil(3.0 * b_val)
            if r_num > MAX_BLUR_RADIUS:
                raise _radius_too_large(f"blur_sigma={b_val:.4g} (radius ceil(3 * blur_sigma) = {r_num})")
            radius = max_radius = r_num
        if not torch.is_tensor(b_val) and b_val == 0.0:
            b_val = None  # identity
    kernel["blur_sigma"] = b_val
    return Params(**kernel, radius=radius, max_radius=max_radius, blur_sigma_host=blur_sigma_host,
                  radius_host=radius_host)


def _captured_params(x: torch.Tensor, call: Call) -> Params:
    """:func:`kernel_params` during CUDA graph capture (README, "CUDA graphs"), where nothing may
    sync with the host: a parameter tensor on x's device is used as it is, unchecked (a
    negative, too large or non-finite value then gives non-finite output instead of an error),
    as one value per sample, so every replay reads the tensor's values at that replay. A 0-d
    CPU tensor is read as a number (frozen into the graph, as numbers are); numbers are checked
    as always. A per-sample CPU tensor (its copy to the GPU would be captured from pageable
    memory) and a blur_sigma tensor (the radius it gives decides the launch) are refused."""
    n = x.shape[0]
    acc = compute_dtype(x.dtype)
    if isinstance(call.blur_sigma, torch.Tensor):
        raise RuntimeError(
            "mollify: during CUDA graph capture blur_sigma must be a number: the blur radius it gives decides the "
            "kernel launch and would be read on the host (a sync); use one blur_sigma for the graph")
    on_device: Dict[str, torch.Tensor] = {}
    numbers: Dict[str, Any] = {}  # the call's parameters for the usual checks
    for rule in PER_SAMPLE_RULES:
        t = getattr(call, rule.name)
        if not isinstance(t, torch.Tensor):
            continue
        if t.device == x.device:
            on_device[rule.name] = (t.expand(n) if t.dim() == 0 else t).to(torch.float64)
            numbers[rule.name] = rule.minimum or 0.0  # a placeholder that passes, replaced below
        elif t.dim() == 0 and t.device.type == "cpu":
            numbers[rule.name] = float(t)
        else:
            raise RuntimeError(
                f"mollify: during CUDA graph capture a {rule.name} tensor must be on x's device ({x.device}) or a 0-d "
                f"CPU tensor, got a {tuple(t.shape)} tensor on {t.device}: copying it would be captured from host "
                f"memory. Move it to {x.device} before capturing")
    vp = call.alpha is None
    if vp and "sigma" in on_device:
        numbers["alpha"] = 1.0  # not derived from the placeholder: from the device sigma below
    p = kernel_params(x, call.replace(**numbers))
    changes: Dict[str, Any] = {name: t.to(acc).contiguous() for name, t in on_device.items()}
    if vp and "sigma" in on_device:
        s = on_device["sigma"]
        changes["alpha"] = torch.sqrt(1.0 - s * s).to(acc).contiguous()
    return replace(p, **changes)

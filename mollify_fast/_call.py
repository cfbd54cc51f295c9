"""The record of one ``mollify`` call, from the public function to the backend's launch.

The public function checks its arguments once (types, shapes, devices:
:func:`mollify_fast._validate.check_static`) and returns a :class:`Call`; everything after that
reads the call's named fields: the custom ops, their fake (meta) implementations, the vmap
rule, and ``_op._run``, which checks the values (:func:`mollify_fast._validate.kernel_params`),
chooses the backend and takes the stream, then sets the call's ``params`` (the values in kernel
form, :class:`Params`) and ``rng`` (the stream the kernels draw from) and hands the record itself
to the backend's launcher, ``mollify_<backend>(call)``. The C++ backends encode it once, into
the extension's one argument struct (``backends._native.call_args``); the Triton backend into
its launch plan (``backends._triton_plan._plan_full``).

The dispatcher cannot carry a Python object, so a call crosses the two ``torch.library``
custom ops as a flat argument list. This module is the one place that list is spelled
(:data:`PARAMS_SCHEMA`, used by both ops' schemas) and the one encoder (:meth:`Call.op_args`,
:meth:`Call.out_op_args`) and decoder (:meth:`Call.from_op`) of it. A parameter that may be a
number or a tensor travels as two optional arguments, ``sigma`` (a float) and ``sigma_tensor``,
exactly one of them given; ``alpha`` with neither given is the variance-preserving
``alpha = sqrt(1 - sigma^2)``, ``blur_sigma`` with neither given is no blur, ``blur_radius``
None is ``ceil(3 * blur_sigma)``. No other encoding exists.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Optional, Sequence, Tuple, Union, cast

import torch

Param = Union[float, torch.Tensor]
"""A parameter: a Python float, or a 0-d or per-sample ``[N]`` tensor (on the CPU or x's device)."""

@dataclass(frozen=True)
class PerSample:
    """How a parameter that is a number or a per-sample tensor is checked, by rule: its values
    must be finite and fit the compute dtype (every such parameter), and be at least ``minimum``
    where one is given. ``required``: the call must give it; otherwise None means "not given"
    (each parameter's own meaning, :class:`Call`)."""

    name: str
    minimum: Optional[float] = None
    required: bool = False


PER_SAMPLE_RULES = (
    PerSample("sigma", minimum=0.0, required=True),
    PerSample("alpha"),
    PerSample("blur_sigma", minimum=0.0),
)
PER_SAMPLE = tuple(r.name for r in PER_SAMPLE_RULES)
"""The parameters that are a number or a per-sample tensor, in the order every encoding keeps:
the custom ops' argument pairs, the C++ ``ParamIndex`` (csrc/mollify_args.h), the
``(value, pointer)`` pairs the native backends pass and the Triton kernels' ``<name>_ptr``
arguments. Each is a :class:`Call` field and a :class:`Params` field of the same name; the
checks (``_validate``), the vmap rule, the encoders and the Triton plan iterate over them."""

# The parameter block of both custom ops (``mollify_fast::mollify`` and ``mollify_out``), in
# torch.library's schema language. ``stream`` is mutated: the generator's words advance.
PARAMS_SCHEMA = (
    "".join(f"float? {p}, Tensor? {p}_tensor, " for p in PER_SAMPLE)
    + "SymInt? blur_radius, Tensor(s!)? stream, str backend, float input_scale, float input_shift, bool dequantize"
)
FUNCTIONAL_SCHEMA = (
    f"(Tensor x, {PARAMS_SCHEMA}, bool return_noise, ScalarType? out_dtype, Tensor? given_noise) -> (Tensor, Tensor)"
)
# ``x`` None: in place (x is out). The op never receives two aliased arguments.
OUT_SCHEMA = f"(Tensor(a!) out, Tensor? x, Tensor(b!)? noise, {PARAMS_SCHEMA}, Tensor? given_noise) -> ()"


def _names(schema: str) -> Tuple[str, ...]:
    """The argument names of a schema's parameter list, in order."""
    inner = schema[schema.index("(") + 1:schema.index(") ->")]
    return tuple(a.strip().rsplit(" ", 1)[1] for a in inner.split(","))


FUNCTIONAL_ARGS = _names(FUNCTIONAL_SCHEMA)
OUT_ARGS = _names(OUT_SCHEMA)


def _split(v: Optional[Param]) -> Tuple[Optional[float], Optional[torch.Tensor]]:
    return (None, v) if isinstance(v, torch.Tensor) else (v, None)


def _join(number: Optional[float], tensor: Optional[torch.Tensor]) -> Optional[Param]:
    return tensor if tensor is not None else number


@dataclass
class Params:
    """Parameters in kernel form.

    ``sigma``/``alpha``: a Python float, or a contiguous ``[N]`` tensor in the compute dtype on
    x's device. ``blur_sigma``: the blur's standard deviation, None (no blur), a float, or such a
    tensor. ``radius``: an int, or an int32 ``[N]`` tensor on x's device; ``max_radius`` is its
    maximum (an int), at most ``_blur.MAX_BLUR_RADIUS``. ``blur_sigma_host``/``radius_host``: for
    per-sample blur, the same values as float64 / int64 CPU tensors (the pure-PyTorch blur builds
    its weights on the host), else None.
    """

    sigma: Param
    alpha: Param
    blur_sigma: Optional[Param]
    radius: Union[int, torch.Tensor]
    max_radius: int
    blur_sigma_host: Optional[torch.Tensor] = None
    radius_host: Optional[torch.Tensor] = None
    # The input map (README, "The contract, in short"): x_f = ((x + u) * in_scale) + in_shift,
    # u the dequantisation uniform when ``dequant``. The output dtype is out's.
    in_scale: float = 1.0
    in_shift: float = 0.0
    dequant: bool = False

    def without_blur(self) -> "Params":
        """The same call with no blur (the noise kernel's part of an unfused call)."""
        return replace(self, blur_sigma=None, radius=0, max_radius=0, blur_sigma_host=None, radius_host=None)

    def maps(self, x: torch.Tensor, out: torch.Tensor) -> bool:
        """True when the call is not the plain float op: an input map, or out's dtype not x's."""
        return self.dequant or self.in_scale != 1.0 or self.in_shift != 0.0 or x.dtype != out.dtype


@dataclass(frozen=True)
class Call:
    """One mollify call: ``out = alpha * B(x_f) + sigma * eps`` (README, "The contract, in short").

    Tensors: ``x`` ``[N, ...]`` (uint8 or floating); ``out`` where to write (x's shape, the
    output dtype), or None for new tensors (the functional op, dtype ``out_dtype`` or x's);
    ``noise`` receives eps (rounded to the output dtype), or None; ``return_noise``: the
    functional op allocates it; ``given_noise``: the caller's eps, read instead of a draw.

    Parameters (each a :data:`Param`): ``sigma``; ``alpha`` (None: variance preserving,
    ``sqrt(1 - sigma^2)``); ``blur_sigma`` (None: no blur); ``blur_radius`` (None:
    ``ceil(3 * blur_sigma)`` per sample). The input map ``x_f = (x + u) * input_scale +
    input_shift`` (``u`` uniform in [0, 1) with ``dequantize``). Values are checked later, with
    real values, by ``_validate.kernel_params``.

    ``stream``: a :class:`~mollify_fast.Generator`'s state (7 int64 host words) or its
    device-resident words ``[key, offset]``, advanced by the call; None draws a seed from
    PyTorch's default generator. ``backend``: a name from ``backends.NAMES``.
    """

    x: torch.Tensor
    sigma: Param
    alpha: Optional[Param] = None
    blur_sigma: Optional[Param] = None
    blur_radius: Optional[int] = None
    stream: Optional[torch.Tensor] = None
    backend: str = "auto"
    input_scale: float = 1.0
    input_shift: float = 0.0
    dequantize: bool = False
    out: Optional[torch.Tensor] = None
    out_dtype: Optional[torch.dtype] = None
    noise: Optional[torch.Tensor] = None
    return_noise: bool = False
    given_noise: Optional[torch.Tensor] = None
    # Set by ``_op._run`` once the values are checked, for the backend's launcher (which takes
    # nothing but this record): ``params``, the parameters and the input map in the form the
    # kernels take; ``rng``, the stream the kernels draw from: ``(key, offset)`` by value, a
    # ``generator.DeviceStream`` (the device-resident words the kernels read), or None (PyTorch's
    # default generator: only where ``backends.Limits.torch_rng``). With ``given_noise`` the
    # kernels read that eps and draw nothing.
    params: Optional[Params] = None
    rng: Any = None

    # ---- the one encoder and decoder of the custom ops' argument lists ----

    def _params(self) -> tuple:
        pairs = tuple(v for p in PER_SAMPLE for v in _split(getattr(self, p)))
        return (*pairs, self.blur_radius, self.stream, self.backend, self.input_scale, self.input_shift,
                self.dequantize)

    def op_args(self) -> tuple:
        """The arguments of ``torch.ops.mollify_fast.mollify`` (:data:`FUNCTIONAL_SCHEMA`)."""
        return (self.x, *self._params(), self.return_noise, self.out_dtype, self.given_noise)

    def out_op_args(self, inplace: bool) -> tuple:
        """The arguments of ``torch.ops.mollify_fast.mollify_out`` (:data:`OUT_SCHEMA`);
        ``inplace``: out is x (passed once, as out)."""
        return (self.out, None if inplace else self.x, self.noise, *self._params(), self.given_noise)

    @classmethod
    def from_op(cls, args: Sequence, names: Tuple[str, ...] = FUNCTIONAL_ARGS) -> "Call":
        """The call a custom op received (``names``: :data:`FUNCTIONAL_ARGS` or :data:`OUT_ARGS`)."""
        f = dict(zip(names, args))
        out = f.get("out")
        x = cast(torch.Tensor, f["x"] if f["x"] is not None else out)
        params: Dict[str, Any] = {p: _join(f[p], f[p + "_tensor"]) for p in PER_SAMPLE}
        return cls(
            x=x, **params, blur_radius=f["blur_radius"],
            stream=f["stream"], backend=f["backend"], input_scale=f["input_scale"], input_shift=f["input_shift"],
            dequantize=f["dequantize"], out=out, out_dtype=f.get("out_dtype"), noise=f.get("noise"),
            return_noise=bool(f.get("return_noise", False)), given_noise=f["given_noise"])

    def replace(self, **changes: Any) -> "Call":
        """This call with ``changes`` (field names to new values), as ``dataclasses.replace``
        gives it at a fraction of its cost (that re-runs the frozen ``__init__``: several
        microseconds, paid on every general-path call)."""
        assert changes.keys() <= _FIELDS, f"Call has no field {set(changes) - _FIELDS}"
        new = object.__new__(Call)
        d = new.__dict__
        d.update(self.__dict__)
        d.update(changes)
        return new

    @property
    def resolved(self) -> Params:
        """The kernel form of the parameters (set before any launcher runs)."""
        assert self.params is not None, "a launcher runs a call whose values mollify has checked"
        return self.params

    @property
    def target(self) -> torch.Tensor:
        """``out`` (given to every launcher)."""
        assert self.out is not None, "a launcher writes into the call's out"
        return self.out

    @property
    def output_dtype(self) -> torch.dtype:
        """The dtype written: out's, else ``out_dtype``, else x's."""
        if self.out is not None:
            return self.out.dtype
        return self.x.dtype if self.out_dtype is None else self.out_dtype


_FIELDS = frozenset(f.name for f in fields(Call))


def arg_dims(in_dims: Sequence, names: Tuple[str, ...] = FUNCTIONAL_ARGS) -> Dict[str, Optional[int]]:
    """vmap's ``in_dims`` by argument name; a parameter pair's dim under the parameter's name."""
    d = dict(zip(names, in_dims))
    for p in PER_SAMPLE:
        d[p] = d.pop(p + "_tensor", None)
    return d

"""The record of one ``mollify`` call, from the public function to the backend's launch.

The public function checks its arguments once (types, shapes, devices:
:func:`mollify_fast._validate.check_static`) and returns a :class:`Call`; everything after that
reads the call's named fields: the custom ops, their fake (meta) implementations, the vmap
rule, and ``_op._run``, which checks the values (:func:`mollify_fast._validate.resolve_params`),
chooses the backend, takes the stream and hands the kernel form (``Params``) to the launcher.

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

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union, cast

import torch

Param = Union[float, torch.Tensor]
"""A parameter: a Python float, or a 0-d or per-sample ``[N]`` tensor (on the CPU or x's device)."""

PER_SAMPLE = ("sigma", "alpha", "blur_sigma")
"""The parameters that are a number or a per-sample tensor, in the order every encoding keeps:
the custom ops' argument pairs, the C++ ``ParamIndex`` (csrc/mollify_args.h) and the
``(value, pointer)`` pairs the native backends pass. Each is a :class:`Call` field and a
``Params`` field of the same name; the vmap rule and the encoders iterate over this tuple."""

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
    real values, by ``resolve_params``.

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

    @property
    def output_dtype(self) -> torch.dtype:
        """The dtype written: out's, else ``out_dtype``, else x's."""
        if self.out is not None:
            return self.out.dtype
        return self.x.dtype if self.out_dtype is None else self.out_dtype


def arg_dims(in_dims: Sequence, names: Tuple[str, ...] = FUNCTIONAL_ARGS) -> Dict[str, Optional[int]]:
    """vmap's ``in_dims`` by argument name; a parameter pair's dim under the parameter's name."""
    d = dict(zip(names, in_dims))
    for p in PER_SAMPLE:
        d[p] = d.pop(p + "_tensor", None)
    return d

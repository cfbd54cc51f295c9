"""``Mollifier``: the one line in a training loop (``x = mol(x, step)``)."""
from __future__ import annotations

import functools
import hashlib
import inspect
import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar, Union, cast, overload

import numpy as np
import torch

from . import schedules
from .backends import NAMES as BACKEND_NAMES
from .generator import Generator
from ._op import _fast, _no_machinery, mollify

MODES = ("noise", "blur", "noise+blur")
_STATE_KEYS = ("mollify_steps", "schedule", "schedule_kwargs", "mode", "blur_sigma_max", "generator")

Step = Union[int, torch.Tensor]
_D = TypeVar("_D", bound=Dict[str, Any])
# A schedule's variance this far outside [0, 1] is rounding (e.g. ``1 - u - 0.1`` at u = 0.9 is
# -2.8e-17) and is clipped; anything further out is a wrong schedule and is refused.
_ROUNDING = 1e-12
# Steps whose noise scale one pass of a built-in schedule computes ahead for mol(x, step) (see
# Mollifier._sigma_block).
_BLOCK = 64
_is_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state
_nn_module = torch.nn.modules.module


def _int_like(name: str, v: Any) -> int:
    """A Python int, numpy integer or 0-d integer tensor as an int (bools and floats refused)."""
    if type(v) is int:  # the training loop's step: no ABC checks on the hot path
        return v
    if torch.is_tensor(v):
        if v.dtype.is_floating_point or v.is_complex() or v.dtype == torch.bool:
            raise TypeError(f"Mollifier: {name} must be an integer, got a {v.dtype} tensor")
        if v.dim() != 0:
            raise ValueError(f"Mollifier: {name} must be one number (a 0-d tensor), got shape {tuple(v.shape)}")
        return int(v)
    if isinstance(v, np.ndarray):  # a 0-d integer array is a number, as mollify takes it
        if v.dtype.kind not in "iu":
            raise TypeError(f"Mollifier: {name} must be an integer, got a numpy array of {v.dtype}")
        if v.ndim != 0:
            raise ValueError(f"Mollifier: {name} must be one number (a 0-d array), got shape {v.shape}")
        return int(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"Mollifier: {name} must be an integer, got {type(v).__name__}")
    return int(v)


def _plain(v: Any) -> Any:
    """numpy scalars as Python numbers: a state of plain types loads with ``weights_only=True``."""
    return v.item() if isinstance(v, np.generic) else v


def _code_digest(code) -> str:
    """12 hex digits of a function's compiled code: bytecode, names and constants (nested code
    included), not its file or line numbers. It changes when the code or Python's version does."""
    h = hashlib.sha256()

    def feed(c) -> None:
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        for k in c.co_consts:
            if inspect.iscode(k):
                feed(k)
            else:
                h.update(repr(k).encode())

    feed(code)
    return h.hexdigest()[:12]


def _schedule_id(schedule: Union[str, Callable]) -> str:
    """What a checkpoint records of the schedule, and what resuming compares (README,
    "Checkpoint resume"): a built-in schedule's name; else the function's module and qualified
    name with a digest of its code (so two lambdas differ), a ``functools.partial``'s function
    and arguments, or a callable object's class and the code of its ``__call__``."""
    if isinstance(schedule, str):
        return schedule
    for name, fn in schedules.SCHEDULES.items():
        if schedule is fn:
            return name
    if isinstance(schedule, functools.partial):
        parts = [_schedule_id(schedule.func)] + [repr(_plain(a)) for a in schedule.args]
        parts += [f"{k}={_plain(v)!r}" for k, v in sorted(schedule.keywords.items())]
        return f"functools.partial({', '.join(parts)})"
    fn = getattr(schedule, "__func__", schedule)  # a bound method: its function
    if not hasattr(fn, "__code__"):  # a callable object: its class and its __call__
        fn = getattr(type(schedule), "__call__", fn)
    owner = fn if hasattr(fn, "__qualname__") else type(schedule)
    name = f"{getattr(owner, '__module__', '?')}.{owner.__qualname__}"
    code = getattr(fn, "__code__", None)
    return f"{name}#{_code_digest(code)}" if code is not None else name


def _full_kwargs(fn: Callable, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The schedule's keyword arguments with its defaults filled in (``tau=0.7`` written out or
    left to the default is the same schedule)."""
    try:
        sig = inspect.signature(fn)
        bound = sig.bind_partial(0.5, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    bound.apply_defaults()
    first = next(iter(sig.parameters))
    return {k: v for k, v in bound.arguments.items() if k != first}


def _input_map_kwargs(input_scale, input_shift, dequantize, out_dtype) -> Dict[str, Any]:
    """The input map's arguments for :func:`mollify`, checked (types, finite values); only
    those that differ from mollify's defaults, so a Mollifier without a map passes none."""
    from ._validate import FLOAT_DTYPES, _map_number

    if not isinstance(dequantize, bool):
        raise TypeError(f"Mollifier: dequantize must be a bool, got {type(dequantize).__name__}")
    if out_dtype is not None and (not isinstance(out_dtype, torch.dtype) or out_dtype not in FLOAT_DTYPES):
        raise TypeError(f"Mollifier: out_dtype must be None or a floating dtype, got {out_dtype}")
    kw: Dict[str, Any] = {}
    for name, v in (("input_scale", input_scale), ("input_shift", input_shift)):
        if v is None:
            continue
        f = _map_number(name, v)
        if not math.isfinite(f):
            raise ValueError(f"Mollifier: {name} must be finite, got {f}")
        if name == "input_scale" or f != 0.0:
            kw[name] = f
    if dequantize:
        kw["dequantize"] = True
    if out_dtype is not None:
        kw["out_dtype"] = out_dtype
    return kw


class Mollifier(torch.nn.Module):
    r"""Anneal data mollification over the first ``mollify_steps`` training steps.

    For ``step < mollify_steps``, with ``u = step / mollify_steps`` and
    ``gamma = schedule(u)`` (the noise variance, from 1 down to ~0):

    * ``"noise"``: ``x_t = sqrt(1 - gamma) * x + sqrt(gamma) * eps``;
    * ``"blur"``: ``x_t = B_s(x)`` with ``s = blur_sigma_max * sqrt(gamma)``;
    * ``"noise+blur"``: ``x_t = sqrt(1 - gamma) * B_s(x) + sqrt(gamma) * eps``, in one pass.

    For ``step >= mollify_steps`` it returns ``x`` itself: no copy, no kernel; except with an
    input map (any of ``input_scale``, ``input_shift``, ``dequantize``, ``out_dtype`` given, or a
    uint8 ``x``), where it applies the map alone: ``mollify(x, 0.0, alpha=1.0, ...)``, no blur,
    dequantised when ``dequantize`` (so a uint8 batch still becomes floats; the generator moves
    as for any call). ``x`` is a batch,
    dim 0 the samples; the blur modes need images ``[N, ..., H, W]`` and refuse a 2-D
    ``[N, D]`` (tabular) batch, whose rows a blur would mix.

    Args:
        mollify_steps: length of the annealing window (> 0).
        schedule: ``"sigmoid"`` (the paper's), ``"linear"``, ``"cosine"``, or a callable
            ``u -> gamma``; ``schedule_kwargs`` go to it.
        mode: ``"noise"``, ``"blur"`` or ``"noise+blur"``.
        blur_sigma_max: blur sigma at step 0 (pixels); required by the blur modes.
        generator: a :class:`Generator`. Default: ``Generator(None)``, whose seed is drawn
            from PyTorch's default CPU generator at the first draw (``torch.manual_seed``
            makes it reproducible). The Mollifier takes the generator over: under
            ``torch.distributed``, rank ``r != 0`` draws with a key derived from the rank
            (read at the first draw), so ranks draw different noise while following the same
            schedule; rank 0 draws the generator's own stream.
        backend: passed to :func:`mollify` (checked here, against ``backends.NAMES``).
        input_scale, input_shift, dequantize, out_dtype: the input map, passed to
            :func:`mollify` at every step (README, "The input map"), e.g. uint8 images to
            [-1, 1] with ``input_scale=2/255, input_shift=-1``. Construction settings, like
            ``backend``: not part of ``state_dict()``.

    ``step`` is an integer: a Python int, a numpy integer, a 0-d integer array or a 0-d integer
    tensor. A custom schedule must return the variance in [0, 1]: values within 1e-12 outside
    (rounding) are clipped, others (and NaN) are refused naming the schedule, ``u`` and the value.
    ``mol(x, step)`` calls a custom schedule once per call, for that step; a built-in schedule
    it evaluates for 64 steps at a time and keeps the noise scales (the same numbers).

    Checkpoints: ``state_dict()`` holds the settings and the stream's *base* seed and
    offset (plain Python types: ``torch.load(weights_only=True)`` needs no allowlist);
    ``load_state_dict()`` refuses a checkpoint made with other settings (schedule,
    its parameters, ``mollify_steps``, ``mode``, ``blur_sigma_max``) or with keys it does not
    know (``strict=False`` ignores those), and a resumed run draws
    exactly the noise the uninterrupted run draws from the same step. A Mollifier is a
    ``torch.nn.Module``: held by a model, its state travels in ``model.state_dict()`` as the
    extra state ``<name>._extra_state`` (not a buffer, so DDP never copies rank 0's stream onto
    the other ranks), and ``model.load_state_dict()`` resumes it: frameworks that checkpoint
    the model (Lightning, HF Trainer) need no hooks. Every rank may load
    rank 0's checkpoint: each derives its own rank's key again, so ranks still differ (and if
    every rank started from the same ``torch.manual_seed``, each resumes its own stream
    exactly). ``state_dict()`` of a Mollifier that has not drawn yet saves the seed as None
    and draws nothing from PyTorch's RNG. ``copy.deepcopy`` is a checkpoint too.

    ``torch.compile``: inside a compiled step (``fullgraph=True`` works), pass the step as a
    0-d integer tensor, ``mol(x, torch.tensor(step))``: the schedule is then computed in the
    graph from the tensor (float64), so a new step is new data, not a new graph: one
    compile for the whole run. A Python int step works too, at the cost of one recompile
    (PyTorch specialises the first graph on the number and makes it dynamic at the second
    value). In a compiled graph the step's value is not checked and the steps
    past the window run the op with ``sigma = 0`` (the same values as ``x``) instead of
    returning ``x`` itself.
    """

    def __init__(
        self,
        mollify_steps: int,
        schedule: Union[str, Callable] = "sigmoid",
        mode: str = "noise",
        blur_sigma_max: Optional[float] = None,
        generator: Optional[Generator] = None,
        backend: str = "auto",
        input_scale: Optional[float] = None,
        input_shift: float = 0.0,
        dequantize: bool = False,
        out_dtype: Optional[torch.dtype] = None,
        **schedule_kwargs: Any,
    ):
        super().__init__()
        if isinstance(mollify_steps, bool) or not isinstance(mollify_steps, cast(Any, numbers.Integral)):  # cast: typeshed's int is no Integral
            raise TypeError(f"Mollifier: mollify_steps must be an int, got {type(mollify_steps).__name__}")
        mollify_steps = int(mollify_steps)
        if mollify_steps <= 0:
            raise ValueError(f"Mollifier: mollify_steps must be > 0, got {mollify_steps}")
        if mode not in MODES:
            raise ValueError(f"Mollifier: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode != "noise":
            ok = isinstance(blur_sigma_max, numbers.Real) and not isinstance(blur_sigma_max, bool)
            if not (ok and math.isfinite(blur_sigma_max) and blur_sigma_max > 0):  # type: ignore[arg-type, operator]  # ok rules None out
                raise ValueError(
                    f"Mollifier: mode {mode!r} needs blur_sigma_max > 0 (the blur sigma at step 0), "
                    f"got {blur_sigma_max}"
                )
            blur_sigma_max = float(blur_sigma_max)  # type: ignore[arg-type]  # not None: checked above
        if not isinstance(backend, str) or backend not in BACKEND_NAMES:
            raise ValueError(f"Mollifier: unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
        if generator is not None and not isinstance(generator, Generator):
            raise TypeError(f"Mollifier: generator must be a mollify_fast.Generator, got {type(generator).__name__}")
        self.schedule_name = schedule if isinstance(schedule, str) else getattr(schedule, "__name__", "custom")
        self._gamma = schedules.get(schedule)
        self._schedule_id = _schedule_id(schedule)
        self.schedule_kwargs = {k: _plain(v) for k, v in schedule_kwargs.items()}
        self._gamma(0.5, **self.schedule_kwargs)  # a bad keyword fails here, not mid-training
        self.mollify_steps = mollify_steps
        self.mode = mode
        self.blur_sigma_max = blur_sigma_max
        self.backend = backend
        self.generator = generator if generator is not None else Generator(None)
        self.generator._key_per_rank()
        self._map = _input_map_kwargs(input_scale, input_shift, dequantize, out_dtype)
        self._plain_noise = mode == "noise" and not self._map  # forward's short path applies
        # The schedule with its keywords bound once (a keyword unpack per call is a cold-cache cost).
        self._gamma_at = functools.partial(self._gamma, **self.schedule_kwargs) if self.schedule_kwargs else self._gamma
        # A built-in schedule is a pure function of the step: mol(x, step) takes its noise scale
        # from a block computed ahead (_sigma_block); a custom one is called at each step.
        self._pure_schedule = any(self._gamma is fn for fn in schedules.SCHEDULES.values())
        self._sigmas: Tuple[Optional[int], int, Tuple[float, ...]] = (None, 0, ())  # (mollify_steps, first step, sigmas)

    def _apply(self, fn, recurse=True):
        # nn.Module.to / .cuda / .cpu (what Lightning and every training script call on the
        # model): the stream follows the module, device-resident on a CUDA device (README,
        # "CUDA graphs") and back on the host for the CPU; a dtype-only move changes nothing.
        home = self.generator.resident_device
        probe = fn(torch.empty(0, device=home) if home is not None else torch.empty(0))
        if isinstance(probe, torch.Tensor):
            dev = probe.device
            if dev.type == "cuda" and dev != home:
                self.generator.to_device(dev)
            elif dev.type == "cpu" and home is not None and dev != home:
                self.generator.to_device("cpu")
        return super()._apply(fn, recurse)

    @staticmethod
    def _check_step(step: Step) -> int:
        step = _int_like("step", step)
        if step < 0:
            raise ValueError(f"Mollifier: step must be >= 0, got {step}")
        return step

    def gamma(self, step: Step) -> float:
        """The noise variance at ``step`` (0 from ``mollify_steps`` on)."""
        step = self._check_step(step)
        if step >= self.mollify_steps:
            return 0.0
        return self._variance(step)

    def _variance(self, step: int) -> float:
        u = step / self.mollify_steps
        g = self._gamma_at(u)
        if 0.0 <= g <= 1.0:  # one comparison on the hot path; False for NaN
            return float(g)
        v = float(g)
        if -_ROUNDING <= v < 0.0 or 1.0 < v <= 1.0 + _ROUNDING:
            return min(max(v, 0.0), 1.0)
        raise ValueError(
            f"Mollifier: the schedule {self.schedule_name!r} gave the variance gamma(u={u!r}) = {v!r} "
            f"at step {step}; a schedule must return the noise variance in [0, 1] (sigma**2, not "
            f"sigma), for every u in [0, 1)"
        )

    def _sigma_block(self, step: int) -> float:
        """The noise scale ``sqrt(gamma)`` at ``step`` (inside the window), with those of the
        next ``_BLOCK - 1`` steps of the window kept for the calls that follow. With the caches
        cold after a training step, calling the schedule (a Python function) and dividing the
        step cost 1-3 us of a ~45 us ``mol(x, step)`` (in-loop ablation on the dev VM); a
        block's values are the same numbers each step would compute (``_variance``), computed
        while the code is warm."""
        steps = self.mollify_steps
        sigmas = tuple(math.sqrt(self._variance(s)) for s in range(step, min(step + _BLOCK, steps)))
        self.__dict__["_sigmas"] = (steps, step, sigmas)
        return sigmas[0]

    def _check_batch(self, x: torch.Tensor) -> None:
        if self.mode != "noise" and torch.is_tensor(x) and x.dim() < 3:
            raise ValueError(
                f"Mollifier: mode {self.mode!r} blurs the last two dims of image batches "
                f"[N, ..., H, W], but x has shape {tuple(x.shape)}: a 2-D [N, D] batch is tabular "
                f"data, whose samples a blur would mix; use mode='noise' (for a single image, "
                f"pass x[None])"
            )

    def _mollify(self, x: torch.Tensor, sigma, noise: Optional[torch.Tensor] = None):
        """One mollify call for noise scale ``sigma`` (a float or a 0-d tensor); ``noise``: the
        caller's eps (``mollify(noise=)``), used instead of a draw."""
        if self.mode == "noise":
            return mollify(x, sigma, generator=self.generator, backend=self.backend, noise=noise, **self._map)
        blur = self.blur_sigma_max * sigma
        if self.mode == "blur":
            return mollify(x, 0.0, blur_sigma=blur, generator=self.generator, backend=self.backend, noise=noise, **self._map)
        return mollify(x, sigma, blur_sigma=blur, generator=self.generator, backend=self.backend, noise=noise, **self._map)

    def _apply_traced(self, x: torch.Tensor, step: torch.Tensor, noise: Optional[torch.Tensor] = None):
        # Under torch.compile: no Python branch on the step's value (it would be a graph break
        # or a guard per step); the schedule from the tensor, 0 past the window.
        if step.dtype.is_floating_point or step.dtype == torch.bool or step.dim() != 0:
            raise TypeError(f"Mollifier: step must be a 0-d integer tensor, got {step.dtype} of shape {tuple(step.shape)}")
        u = step.to(torch.float64) / self.mollify_steps
        g = torch.as_tensor(self._gamma(u, **self.schedule_kwargs), dtype=torch.float64)
        g = torch.where((g < 0) & (g >= -_ROUNDING), torch.zeros_like(g), g)  # rounding, as eager
        return self._mollify(x, torch.where(u < 1, g, torch.zeros_like(g)).sqrt(), noise)

    def forward(self, x: torch.Tensor, step: Step, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` mollified for ``step`` (``mol(x, step)``); ``x`` itself from ``mollify_steps`` on.
        ``noise``: your own eps (``mollify``'s ``noise=``), used instead of a draw; no generator
        moves (mode ``"blur"`` adds no noise, so it only checks it)."""
        if (type(step) is int and noise is None and self._plain_noise and 0 <= step < self.mollify_steps
                and not _is_compiling()):
            # The training loop's call (an int step inside the window, mode "noise", no input
            # map): the same steps as below, with the fewest Python calls (each costs
            # microseconds with the caches cold after a training step).
            return mollify(x, math.sqrt(self._variance(step)), generator=self.generator, backend=self.backend)
        if _is_compiling() or (torch.is_tensor(step) and step.is_cuda and torch.cuda.is_current_stream_capturing()):
            # Under the compiler a Python int becomes dynamic after one recompile; as a tensor it
            # keeps the schedule's float arithmetic out of the compiler's symbolic guards. Inside a
            # CUDA graph capture reading the step would sync with the host: the schedule is
            # computed on the device from the tensor, so each replay anneals by the step the
            # tensor holds then (README, "CUDA graphs").
            self._check_batch(x)
            return self._apply_traced(x, step if torch.is_tensor(step) else torch.tensor(step), noise)
        step = self._check_step(step)
        if step >= self.mollify_steps:
            if self._map or (torch.is_tensor(x) and x.dtype == torch.uint8):
                # The map alone (class docstring): a uint8 batch still becomes floats.
                return mollify(x, 0.0, alpha=1.0, generator=self.generator, backend=self.backend, **self._map)
            return x
        self._check_batch(x)
        return self._mollify(x, math.sqrt(self._variance(step)), noise)

    if TYPE_CHECKING:  # what ``mol(x, step)`` returns (torch.nn.Module types its __call__ as Any)
        def __call__(self, x: torch.Tensor, step: Step, noise: Optional[torch.Tensor] = None) -> torch.Tensor: ...
    else:
        def __call__(self, *args, **kwargs):
            # nn.Module's call path when anything uses it (a compiled module, jit tracing, a hook
            # on this module or a global one); else forward directly, as that path itself does,
            # minus its two frames (each a cold-cache cost in a training loop). The attributes
            # are read from the instance dict: nn.Module defines __getattr__, so each
            # ``self.name`` takes CPython's slow attribute path.
            d = self.__dict__
            if (d.get("_compiled_call_impl") is None
                    and not (d["_backward_hooks"] or d["_backward_pre_hooks"] or d["_forward_hooks"]
                             or d["_forward_pre_hooks"] or _nn_module._global_backward_pre_hooks
                             or _nn_module._global_backward_hooks or _nn_module._global_forward_hooks
                             or _nn_module._global_forward_pre_hooks)):
                if len(args) == 2 and not kwargs:
                    # The training loop's mol(x, step): forward's first branch, inlined down to the
                    # plan path (each Python frame costs microseconds with the caches cold
                    # after a training step); anything else it does not take goes to forward.
                    # _no_machinery() includes jit.trace's check.
                    x, step = args
                    steps = d["mollify_steps"]
                    if (type(step) is int and d["_plain_noise"] and 0 <= step < steps
                            and type(x) is torch.Tensor and _no_machinery()):
                        known, first, sigmas = d["_sigmas"]
                        i = step - first
                        if known is steps and 0 <= i < len(sigmas):
                            s = sigmas[i]
                        elif d["_pure_schedule"]:
                            s = self._sigma_block(step)
                        else:
                            g = d["_gamma_at"](step / steps)
                            s = math.sqrt(g) if 0.0 <= g <= 1.0 else None  # None: forward names it
                        if s is not None:
                            res = _fast(x, s, None, d["generator"], False, d["backend"])
                            # Not planned (another backend, a layout the plan path does not
                            # take): forward's first branch, without asking the schedule again.
                            return res if res is not None else mollify(x, s, generator=d["generator"],
                                                                       backend=d["backend"])
                if not _tracing_state():
                    return self.forward(*args, **kwargs)
            return torch.nn.Module.__call__(self, *args, **kwargs)

    def get_extra_state(self) -> Dict[str, Any]:
        """The position in a parent module's ``state_dict()``: the same dict as a standalone
        ``state_dict()``, of plain Python types."""
        return {
            "mollify_steps": self.mollify_steps,
            "schedule": self._schedule_id,
            "schedule_kwargs": dict(self.schedule_kwargs),
            "mode": self.mode,
            "blur_sigma_max": _plain(self.blur_sigma_max),
            "generator": self.generator.state_dict(),  # base seed: any rank can load it
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        """Resume from a parent module's ``load_state_dict()`` (strict: see :meth:`load_state_dict`)."""
        self._load(state, strict=True)

    @overload
    def state_dict(self, *, destination: _D, prefix: str = ..., keep_vars: bool = ...) -> _D: ...
    @overload
    def state_dict(self, *, prefix: str = ..., keep_vars: bool = ...) -> Dict[str, Any]: ...
    def state_dict(self, *args: Any, destination=None, prefix: str = "", keep_vars: bool = False) -> Dict[str, Any]:
        """The settings and the stream's position (see the class docstring). Called by a parent
        module (with a prefix or destination) it is ``torch.nn.Module.state_dict``, which holds
        the same dict as ``<prefix>_extra_state``."""
        if args or destination is not None or prefix:
            return super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        return self.get_extra_state()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Resume from ``state_dict()`` (or ``torch.nn.Module.state_dict``'s ``{'_extra_state': ...}``).

        Refuses a checkpoint made with other settings, and, with ``strict=True``, one with keys
        it does not know (named in the error); nothing changes when it refuses. Returns
        PyTorch's ``(missing_keys, unexpected_keys)``, the keys ``strict=False`` ignored.
        """
        if isinstance(state_dict, Mapping) and set(state_dict) == {"_extra_state"}:
            state_dict = state_dict["_extra_state"]
        unexpected = self._load(state_dict, strict)
        return torch.nn.modules.module._IncompatibleKeys([], unexpected)

    def _load(self, state: Mapping[str, Any], strict: bool) -> list:
        """Check ``state`` against this Mollifier's settings, then load its stream position."""
        if not isinstance(state, Mapping) or any(k not in state for k in _STATE_KEYS):
            missing = [k for k in _STATE_KEYS if not isinstance(state, Mapping) or k not in state]
            raise ValueError(
                f"Mollifier.load_state_dict: state must come from Mollifier.state_dict(); missing {missing}"
            )
        unexpected = sorted(str(k) for k in state if k not in _STATE_KEYS)
        if unexpected and strict:
            raise ValueError(
                f"Mollifier.load_state_dict: unexpected keys {unexpected} in the state; it must come "
                f"from Mollifier.state_dict() (pass strict=False to ignore them)"
            )
        if state["schedule"] != self._schedule_id:
            raise ValueError(
                f"Mollifier.load_state_dict: the checkpoint was made with schedule={state['schedule']!r} "
                f"but this Mollifier has schedule={self._schedule_id!r}; construct it with the "
                f"checkpoint's schedule (a custom schedule is compared by module, qualified name and a "
                f"digest of its code; see README, 'Checkpoint resume')"
            )
        for key in ("mollify_steps", "mode", "blur_sigma_max"):
            here = getattr(self, key)
            if state[key] != here:
                raise ValueError(
                    f"Mollifier.load_state_dict: the checkpoint was made with {key}={state[key]!r} but "
                    f"this Mollifier has {key}={here!r}; construct it with the checkpoint's settings "
                    f"(resuming with other ones would silently follow another schedule)"
                )
        saved = _full_kwargs(self._gamma, dict(state["schedule_kwargs"]))
        here = _full_kwargs(self._gamma, self.schedule_kwargs)
        for k in sorted(set(saved) | set(here)):
            if saved.get(k) != here.get(k):
                raise ValueError(
                    f"Mollifier.load_state_dict: the checkpoint's schedule {self.schedule_name!r} has "
                    f"{k}={saved.get(k)!r} but this Mollifier has {k}={here.get(k)!r}; construct it "
                    f"with the checkpoint's schedule parameters"
                )
        gen = state["generator"]
        if not isinstance(gen, dict) or set(gen) != {"seed", "offset"}:
            raise ValueError(f"Mollifier.load_state_dict: bad generator state {gen!r}")
        self.generator.load_state_dict(gen)  # keeps the per-rank key: each rank derives its own
        return unexpected

    def __repr__(self) -> str:
        return (
            f"Mollifier(mollify_steps={self.mollify_steps}, schedule={self.schedule_name!r}, "
            f"mode={self.mode!r}, blur_sigma_max={self.blur_sigma_max})"
        )

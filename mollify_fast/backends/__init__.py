"""Backend registry: availability, per-tensor support, and ``auto`` dispatch.

Each backend module ``mollify_<name>.py`` exposes

* ``availability() -> (bool, reason)``: can it run at all in this process (built? GPU?);
* ``supports(x, params) -> (bool, reason)``: can it run on this tensor (device, dtype);
* ``mollify_<name>(x, out, noise, params, stream)``: write ``out`` (and ``noise``);
* optionally ``maps_input(x, out, params) -> bool``: whether its launcher applies the input map
  (``params.in_scale``/``in_shift``/``dequant``, x of another dtype than out) itself; where
  not, mollify runs it on the mapped input in the compute dtype (``_op._run_mapped``);
* optionally ``noise_plan(x, out, noise)``: a faster launcher for repeated noise-only calls with
  scalar parameters on x's layout, ``run(x, out, noise, sigma, alpha, stream)`` or a
  :class:`NoisePlan`, or None.

``stream`` is ``(seed, offset)``, or None for "draw from PyTorch's default generator". Nothing
heavy (Triton, the compiled extension, CUDA) is imported until a backend is first asked for.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda", "reference")
NAMES = ("auto",) + BACKENDS
# Backends whose kernels can read the stream from memory (a generator.DeviceStream: the words
# [key, offset] on x's device) instead of by value: the ones that run inside a CUDA graph with
# fresh noise at every replay (README, "CUDA graphs"); cpu reads host words.
STREAM_WORDS = frozenset({"cpu", "cuda", "triton"})


class NoisePlan(NamedTuple):
    """A backend's launchers for repeated noise-only calls on one layout: ``run(x, out, noise,
    sigma, alpha, stream)``, and where the backend takes the stream itself from a generator
    state, ``run_gen(x, out, noise, sigma, alpha, state_ptr, provisional_ok) -> bool`` (False:
    nothing done)."""

    run: Callable[..., None]
    run_gen: Optional[Callable[..., bool]] = None


class BackendUnavailableError(RuntimeError):
    """Raised when a backend that was asked for by name cannot run here; says why."""


@functools.lru_cache(maxsize=None)
def _module(name: str):
    return importlib.import_module(f"{__name__}.mollify_{name}")


# Environment variables a backend's availability depends on, read again at each check: the
# refusal of ``cuda`` on CPU tensors tells the user to set MOLLIFY_FAST_CUDA_EMULATE=1 at run time.
_AVAILABILITY_ENV = {"cuda": "MOLLIFY_FAST_CUDA_EMULATE"}


def availability(name: str) -> Tuple[bool, str]:
    """``(available, reason)`` for one backend in this process (cached per value of the
    environment variable it depends on, if any)."""
    env = _AVAILABILITY_ENV.get(name)
    return _availability(name, os.environ.get(env) if env else None)


@functools.lru_cache(maxsize=None)
def _availability(name: str, env_value: Optional[str]) -> Tuple[bool, str]:
    try:
        return _module(name).availability()
    except Exception as e:  # an import error is a reason, not a crash
        return False, f"{type(e).__name__}: {e}"


availability.cache_clear = _availability.cache_clear  # type: ignore[attr-defined]


def launcher(name: str) -> Callable:
    return getattr(_module(name), f"mollify_{name}")


@functools.lru_cache(maxsize=None)
def auto_table() -> Dict[str, Any]:
    """Backend preference per device type and op, fastest first, from ``auto_table.json``.

    The table is written from measured results (``benchmarks/``) and says which file it came
    from; ``MOLLIFY_FAST_AUTO_TABLE`` may point to another table.
    """
    path = os.environ.get("MOLLIFY_FAST_AUTO_TABLE") or os.path.join(os.path.dirname(__file__), "auto_table.json")
    with open(path) as f:
        return json.load(f)


def resolve(name: str, x: torch.Tensor, params) -> Tuple[str, Callable]:
    """The backend that runs ``x`` with ``params``: the named one, or ``auto``'s choice."""
    if name != "auto":
        ok, why = availability(name)
        if not ok:
            raise BackendUnavailableError(f"mollify: backend {name!r} is unavailable: {why}")
        ok, why = _module(name).supports(x, params)
        if not ok:
            raise BackendUnavailableError(f"mollify: backend {name!r} cannot run this input: {why}")
        return name, launcher(name)
    op = "blur" if params.blur is not None else "noise"
    order = auto_table().get("devices", {}).get(x.device.type, {}).get(op, ["torch"])
    for cand in order:
        if cand in BACKENDS and availability(cand)[0] and _module(cand).supports(x, params)[0]:
            return cand, launcher(cand)
    return "torch", launcher("torch")


def maps_input(name: str, x: torch.Tensor, out: torch.Tensor, params) -> bool:
    """True when backend ``name`` applies the call's input map in its own kernel."""
    fn = getattr(_module(name), "maps_input", None)
    return fn is not None and bool(fn(x, out, params))


def noise_plan(name: str, x: torch.Tensor, out: torch.Tensor, noise) -> Optional[NoisePlan]:
    """``run(x, out, noise, sigma, alpha, stream)`` for noise-only calls with float parameters on
    x's layout, device and dtype, through backend ``name`` (already resolved for x); None where
    the backend has no such launcher for x (then every call takes the general path).

    The backend's own ``plan`` when it has one; else its launcher with a :class:`Params` built
    per call (pure-PyTorch and Triton launchers take any layout as it comes)."""
    mod = _module(name)
    if hasattr(mod, "noise_plan"):
        plan = mod.noise_plan(x, out, noise)
        return plan if plan is None or isinstance(plan, NoisePlan) else NoisePlan(plan)
    if name == "reference" or (name in ("cuda", "triton") and x.device.type == "cpu"):
        return None  # the reference is a test oracle; CPU runs of GPU code read the environment per call
    from .._validate import Params

    launch = launcher(name)

    def run(x, out, noise, sigma, alpha, stream):
        launch(x, out, noise, Params(sigma, alpha, None, 0, 0), stream)

    return NoisePlan(run)

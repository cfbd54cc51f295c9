"""Backend registry: availability, per-tensor support, and ``auto`` dispatch.

Each backend module ``mollify_<name>.py`` exposes

* ``availability() -> (bool, reason)``: can it run at all in this process (built? GPU?);
* ``supports(x, params) -> (bool, reason)``: can it run on this tensor (device, dtype);
* ``mollify_<name>(call)``: write ``call.out`` (and ``call.noise``) for a checked
  :class:`~mollify_fast._call.Call` whose ``params`` (kernel form) and ``rng`` (the stream) are set;
* optionally ``maps_input(x, out, params) -> bool``: whether its launcher applies the input map
  (``params.in_scale``/``in_shift``/``dequant``, x of another dtype than out) itself; where
  not, mollify runs it on the mapped input in the compute dtype (``_op._run_mapped``);
* optionally ``noise_plan(call)``: from the record of a noise-only call on a layout (its x, out
  and noise; the parameters are placeholders), a faster launcher for repeated noise-only calls with
  scalar parameters on x's layout, ``run(x, out, noise, sigma, alpha, stream)`` or a
  :class:`NoisePlan`, or None.

The stream (``call.rng``, a plan's ``stream``) is ``(seed, offset)``, a device-resident
``DeviceStream``, or None for "draw from PyTorch's default generator". Nothing
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


class Limits(NamedTuple):
    """What a backend's kernels take, as data (README, "Backends and the build"): mollify asks
    these, it never names a backend.

    * ``any_radius``: the blur takes a radius ``>= min(H, W)`` itself. Otherwise (the compiled
      kernels mirror once) mollify folds the weights onto the image and runs the call unfused:
      a blur pass into a contiguous temporary, then the backend's noise kernel on it.
    * ``max_dims`` / ``max_plane_dims``: the dims the kernels index after merging (the noise
      kernel; the blur's plane dims in front of H, W). A call with more runs the same kernels
      on contiguous copies of its tensors; None: any.
    * ``stream_words``: the kernels read a device-resident stream (a ``generator.DeviceStream``,
      the words ``[key, offset]`` on x's device) instead of taking it by value, so they run
      inside a CUDA graph with fresh noise at every replay (README, "CUDA graphs"); cpu reads
      host words.
    * ``torch_rng``: with no Generator, the backend draws from PyTorch's default generator
      itself (graph-safe), instead of a seed drawn from it.
    * ``plan_devices``: device types where repeated noise-only calls get a cached launch plan
      (``_op._fast``); the reference is a test oracle, and CPU runs of GPU code read the
      environment per call.
    * ``prepares_eps``: the kernels read a caller's eps only in x's dtype or the compute dtype
      (``_native.eps_input`` converts it once, before the layout is planned).
    """

    any_radius: bool = False
    max_dims: Optional[int] = None
    max_plane_dims: Optional[int] = None
    stream_words: bool = False
    torch_rng: bool = False
    plan_devices: Tuple[str, ...] = ()
    prepares_eps: bool = False


NATIVE_DIMS = 8  # dims the C++ kernels index after merging (csrc/mollify_args.h kMaxDims)
LIMITS: Dict[str, Limits] = {
    "torch": Limits(any_radius=True, torch_rng=True, plan_devices=("cpu", "cuda")),
    "reference": Limits(any_radius=True),
    "cpu": Limits(max_dims=NATIVE_DIMS, max_plane_dims=NATIVE_DIMS - 2, stream_words=True, plan_devices=("cpu",),
                  prepares_eps=True),
    "cuda": Limits(max_dims=NATIVE_DIMS, max_plane_dims=NATIVE_DIMS - 2, stream_words=True, plan_devices=("cuda",),
                   prepares_eps=True),
    "triton": Limits(max_dims=4, max_plane_dims=3, stream_words=True, plan_devices=("cuda",)),
}


class NoisePlan(NamedTuple):
    """A backend's launchers for repeated noise-only calls on one layout: ``run(x, out, noise,
    sigma, alpha, stream)``, and where the backend takes the stream itself from a generator
    state, ``run_gen(x, out, noise, sigma, alpha, state_ptr, group) -> bool`` (False: nothing
    done; ``group``: ``generator.default_group``, where the call looks for a process group, only
    for a provisional stream)."""

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
    op = "blur" if params.blur_sigma is not None else "noise"
    order = auto_table().get("devices", {}).get(x.device.type, {}).get(op, ["torch"])
    for cand in order:
        if cand in BACKENDS and availability(cand)[0] and _module(cand).supports(x, params)[0]:
            return cand, launcher(cand)
    return "torch", launcher("torch")


def maps_input(name: str, x: torch.Tensor, out: torch.Tensor, params) -> bool:
    """True when backend ``name`` applies the call's input map in its own kernel."""
    fn = getattr(_module(name), "maps_input", None)
    return fn is not None and bool(fn(x, out, params))


def noise_plan(name: str, call) -> Optional[NoisePlan]:
    """``run(x, out, noise, sigma, alpha, stream)`` for noise-only calls with float parameters on
    the layout, device and dtype of ``call`` (a :class:`~mollify_fast._call.Call` whose x, out
    and noise give them), through backend ``name`` (already resolved for x); None where the
    backend has no such launcher for x (then every call takes the general path).

    The backend's own ``noise_plan`` when it has one; else its launcher with the call's record
    built per call (pure-PyTorch and Triton launchers take any layout as it comes)."""
    if call.x.device.type not in LIMITS[name].plan_devices:
        return None
    mod = _module(name)
    if hasattr(mod, "noise_plan"):
        plan = mod.noise_plan(call)
        return plan if plan is None or isinstance(plan, NoisePlan) else NoisePlan(plan)
    from .._call import Call, Params

    launch = launcher(name)

    def run(x, out, noise, sigma, alpha, stream):
        launch(Call(x=x, sigma=sigma, alpha=alpha, out=out, noise=noise, params=Params(sigma, alpha, None, 0, 0),
                    rng=stream))

    return NoisePlan(run)

"""Running a launch plan: Triton's public dispatcher, or the compiled kernel it returned.

Every use of Triton's private API in the backend is in this module. The public launch,
``kernel[grid](*args, **constexprs, **options)`` (:func:`_jit_launch`), compiles on first use
and launches; it is the path under ``TRITON_INTERPRET=1``, for a specialisation's first call and
after any failure. The fast path reads ``JITFunction.params`` (each parameter's
``is_constexpr``, ``do_not_specialize``, ``name``), keeps the ``CompiledKernel`` the dispatcher
returned and calls its ``launch_metadata``, ``run``, ``function`` and ``packed_metadata``, with
``triton.knobs.runtime.launch_enter_hook`` / ``launch_exit_hook`` and the stream of
``triton.runtime.driver.driver.active``: what ``JITFunction.run`` does after binding in Triton
3.6, 3.7 and 3.8. The gate is the same for every version: a kernel whose parameters do not fit
(:func:`_kernel_layout` None) takes the dispatcher, and any error on the fast path turns it off
for the process (``_FAST["error"]`` says why).
"""
from __future__ import annotations

import functools
import operator
import os
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ._triton_plan import Launch


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# Per-call host cost. ``kernel[grid](...)`` goes through Triton's JIT dispatcher on every call:
# bind ~45 arguments, derive their specialisation, build and look up the cache key, then launch.
# On an H100 host (Triton 3.6) a 256x3x32x32 call took 90-220 us against 21 us for x.clone().
# After the first call of a specialisation the dispatcher only ever finds the same compiled
# kernel again, so it is kept here, keyed by everything Triton specialises on, and later calls
# launch it exactly as ``JITFunction.run`` does after binding (Triton 3.6, 3.7 and 3.8 have the
# same code there). Anything unexpected on that path turns it off for the process.
_COMPILED: Dict[tuple, Any] = {}  # (kernel, device, constexprs, options, argument specialisation) -> CompiledKernel
_FAST: Dict[str, Union[bool, str, None]] = {"on": True, "error": None}  # "error": why the fast path was turned off, for diagnosis


@functools.lru_cache(maxsize=None)
def _kernel_layout(kernel) -> Optional[Tuple[frozenset, tuple]]:
    """``(positions of do_not_specialize arguments, constexpr names in order)`` of a kernel whose
    constexpr parameters all follow its runtime ones (ours do), else None (no fast path)."""
    params = kernel.params
    runtime = [p for p in params if not p.is_constexpr]
    if any(p.is_constexpr for p in params[:len(runtime)]):
        return None
    return (frozenset(i for i, p in enumerate(runtime) if p.do_not_specialize),
            tuple(p.name for p in params[len(runtime):]))


def _getter(idx):
    # operator.itemgetter that always returns a tuple (one C call instead of a Python loop).
    idx = tuple(idx)
    if len(idx) >= 2:
        return operator.itemgetter(*idx)
    return (lambda a: (a[idx[0]],)) if idx else (lambda a: ())


def _int_kind(v: int) -> int:
    # Triton types a non-specialised int by its range only: i32, i64 or u64.
    return 0 if -2**31 <= v < 2**31 else (1 if -2**63 <= v < 2**63 else 2)


@functools.lru_cache(maxsize=256)
def _arg_roles(kernel, types: tuple):
    """Getters for the arguments of a kernel called with these argument types: tensors, ints
    Triton specialises (value 1, multiple of 16, width), do_not_specialize ints (width only),
    and the constexpr values in signature order. None when the fast path does not apply."""
    layout = _kernel_layout(kernel)
    if layout is None:
        return None
    dns, const = layout
    tensors = [i for i, t in enumerate(types) if issubclass(t, torch.Tensor)]
    ints = [i for i, t in enumerate(types) if i not in dns and not issubclass(t, (torch.Tensor, float))]
    return _getter(tensors), _getter(ints), _getter(sorted(dns)), _getter(const)


def _spec_key(L: Launch, device, types: tuple, roles) -> tuple:
    """Everything Triton's binder specialises a launch on, as a hashable key: tensor dtypes and
    16-byte alignment, int values (a superset of Triton's value-1 / multiple-of-16 / width
    properties; ours come from shapes and strides), only the width of do_not_specialize ints
    (the stream), floats by type alone; plus the constexprs, options and device."""
    tensors, ints, dns, _ = roles
    a = L.args
    return (L.kernel, device, types, tuple(L.constexprs.items()), tuple(L.options.items()), ints(a),
            tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors(a)]), tuple(map(_int_kind, dns(a))))


def _jit_launch(L: Launch):
    """Triton's own dispatcher (binds, specialises, compiles on first use, launches); returns
    the ``CompiledKernel`` it launched."""
    return L.kernel[L.grid](*L.args, **L.constexprs, **L.options)


def _current_stream():
    # What JITFunction.run launches on: the current device's current (torch) stream.
    from triton.runtime.driver import driver

    return driver.active.get_current_stream(driver.active.get_current_device())


def _compiled_launch(ck, L: Launch, tail: tuple) -> None:
    """``JITFunction.run`` after binding (Triton 3.6-3.8): canonical grid, launch metadata for
    the launch hooks, then the compiled launcher with every parameter (constexprs included) in
    signature order."""
    from triton import knobs

    stream = _current_stream()
    grid = L.grid
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    args = L.args + tail
    meta = ck.launch_metadata(grid, stream, *args)
    ck.run(grid[0], g1, g2, stream, ck.function, ck.packed_metadata, meta,
           knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *args)


def _launch(launches: List[Launch], device=None) -> None:
    """Run the launches in order: through the kept ``CompiledKernel`` when this specialisation
    already ran on ``device`` (see ``_COMPILED``), else through Triton's dispatcher. The
    interpreter (TRITON_INTERPRET=1) always takes the dispatcher."""
    fast = _FAST["on"] and not _interpret()
    for L in launches:
        types = tuple(map(type, L.args)) if fast else None
        roles = _arg_roles(L.kernel, types) if fast else None
        if roles is None:
            _jit_launch(L)
            continue
        assert types is not None  # roles come only with the fast path, which sets types
        key = _spec_key(L, device, types, roles)
        ck = _COMPILED.get(key)
        if ck is not None:
            try:
                _compiled_launch(ck, L, roles[3](L.constexprs))
                continue
            except Exception as e:  # noqa: BLE001 - any surprise: Triton's own path from now on
                _FAST["on"], _FAST["error"] = False, f"{type(e).__name__}: {e}"
                fast = False
                _COMPILED.clear()
        ck = _jit_launch(L)
        if fast and ck is not None:
            _COMPILED[key] = ck

"""The ``cpu`` backend: fused C++ kernels (csrc/mollify_cpu.cpp) on CPU tensors, with OpenMP.

One pass per call: the Philox normals of a segment are drawn into a thread-local buffer
(vectorised, csrc/normals_cpu.cpp), then x is read once and out written once. The blur is
separable over bands of rows with mirrored halos. Work items depend only on their index, so
results are identical for any thread count: up to ``torch.get_num_threads()``, one thread per
16,384 elements (``_C.threads_for``), since waking a thread costs about as much as that work.
"""
from __future__ import annotations

import os
from typing import Tuple

import torch

from .._call import Call, Params
from . import NoisePlan
from ._native import call_args, extension, make_plan, reading_eps


_threads = torch.get_num_threads


def _one_thread() -> int:
    return 1


def _after_fork_in_child() -> None:
    # OpenMP's thread pool does not survive fork(): a forked child whose parent had run a
    # parallel region hangs at its own first one. Such a child runs this backend on one thread
    # (same numbers: results do not depend on the thread count). See README, "Errors and
    # limits, in one place".
    global _threads
    _threads = _one_thread


os.register_at_fork(after_in_child=_after_fork_in_child)


def availability() -> Tuple[bool, str]:
    ext, why = extension()
    if ext is None:
        return False, why
    return True, "C++ extension" + (" with OpenMP" if ext.with_openmp else " (no OpenMP: one thread)")


def supports(x: torch.Tensor, params: Params) -> Tuple[bool, str]:
    if not x.is_cpu:
        return False, f"the cpu backend runs CPU tensors, x is on {x.device}"
    return True, ""


def maps_input(x: torch.Tensor, out: torch.Tensor, p: Params) -> bool:
    """The noise kernel applies the input map itself (``_C.mollify_cpu_mapped``); a blur with a
    map runs on the mapped temporary (``_op._run_mapped``)."""
    return p.blur_sigma is None


def mollify_cpu(call: Call) -> None:
    """Writes ``call.out`` (and ``call.noise``) in one pass; the caller's eps (``given_noise``) is
    read in the same pass (never with an input map: mollify maps x into a temporary first)."""
    ext, _ = extension()
    call = reading_eps(call)  # held until the kernel returns
    ext.mollify_cpu(call_args(call), _threads())


def noise_plan(call: Call):
    """A launcher for repeated noise-only calls on x's layout (see ``_op._fast``):
    ``run(x, out, noise, sigma, alpha, (seed, offset))`` with Python-float parameters that the
    caller has checked. Same kernel and arguments as :func:`mollify_cpu`; the layout part of
    them is built once, here, into the layout's ``_C.Args``."""
    ext, _ = extension()
    cplan, launch, launch_gen = make_plan(call), ext.mollify_cpu_plan, ext.mollify_cpu_plan_gen

    # Both launch calls are plain CPython functions given the plan by its address (_plan keeps
    # the plan alive): a training loop's one call per step skips pybind11's dispatcher.
    def run(x, out, noise, sigma, alpha, stream, _plan=cplan, _at=cplan.address):
        launch(_at, x.data_ptr(), out.data_ptr(), 0 if noise is None else noise.data_ptr(), sigma, alpha,
               stream[0], stream[1], _threads())

    def run_gen(x, out, noise, sigma, alpha, state_ptr, group, _plan=cplan, _at=cplan.address):
        # The stream taken from the generator state inside the launch call (one atomic step, as
        # generator.take_stream; the call asks `group` only for a provisional stream); False:
        # nothing done, the caller takes it the long way.
        return launch_gen(_at, x.data_ptr(), out.data_ptr(), 0 if noise is None else noise.data_ptr(), sigma,
                          alpha, state_ptr, group, _threads())

    return NoisePlan(run, run_gen)

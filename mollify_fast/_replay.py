"""Activation checkpointing: the recomputation draws the forward's noise again.

``torch.utils.checkpoint`` runs a block's forward twice: once in the forward pass, again while
the autograd engine runs the backward. PyTorch restores its own RNG before the recomputation
(``preserve_rng_state=True``), which is how dropout repeats itself; a
:class:`mollify_fast.Generator` is not PyTorch's RNG, so without help the recomputation would
draw new noise and advance the generator a second time (wrong gradients, and a checkpoint
saved after the step that no longer resumes exactly).

So a draw from a Generator inside a checkpointed forward is recorded on the checkpoint call
itself, in order, per generator, and the recomputation of that call (during a backward) takes
the recorded streams in the same order without advancing the generator. The checkpoint call
is the non-reentrant flavour's ``_CheckpointFrame`` (reached from the saved-tensor hooks it
installs, in the forward and in the recomputation alike) or the reentrant flavour's autograd
``ctx`` (from the ``CheckpointFunction`` frame on the stack). The record lives and dies with
that object, so steps never see each other's draws, whatever the RNG state or object ids; it
does not depend on ``preserve_rng_state`` either. A draw the recomputation makes beyond those
of the forward (a block whose control flow changed) draws fresh from the generator.

Cost: the common case (grad enabled, no saved-tensor hooks, not in a backward) is three C
calls before :func:`take_stream`; with grad disabled (``torch.no_grad`` data pipelines, the
reentrant flavour's forward) a walk up the Python stack looks for the reentrant checkpoint
(at most 64 frames).

Relies on ``torch.utils.checkpoint``'s internals (``_CheckpointFrame``, ``CheckpointFunction``),
checked by ``tests/test_mollify_machinery.py`` on the torch the suite runs with; where they are
missing, draws are plain draws.
"""
from __future__ import annotations

import sys
import weakref
from types import FrameType
from typing import Any, Callable, Optional, Tuple

import torch
import torch.utils.checkpoint as _cp

from .generator import take_stream

_grad_enabled = torch.is_grad_enabled
# None where no saved-tensor hooks are set (torch's stubs say a pair always)
_top_hooks: Callable[[bool], Optional[Tuple[Any, Any]]] = torch._C._autograd._top_saved_tensors_default_hooks
_graph_task = torch._C._current_graph_task_id
_CKPT_FRAME = getattr(_cp, "_CheckpointFrame", None)
_REENTRANT = getattr(_cp, "CheckpointFunction", None)
_REENTRANT_CODES = tuple(
    f.__code__ for f in (getattr(_REENTRANT, "forward", None), getattr(_REENTRANT, "backward", None))  # type: ignore[union-attr]  # hasattr() drops None
    if hasattr(f, "__code__")
)
_RECORD = "_mollify_fast_draws"  # attribute on the checkpoint call: {generator state id: [streams]}
_REPLAYED = "_mollify_fast_replayed"  # {(graph task, generator state id): streams replayed so far}


def _frame_in_closure(fn, depth: int) -> Optional[Any]:
    """The ``_CheckpointFrame`` that ``fn`` closes over (directly, through a weakref, or through
    a function it closes over, ``depth`` levels down), or None."""
    assert _CKPT_FRAME is not None  # only called where this torch has it
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if type(v) is weakref.ReferenceType:
            v = v()
        if isinstance(v, _CKPT_FRAME):
            return v
        if depth > 1 and callable(v) and getattr(v, "__closure__", None):
            found = _frame_in_closure(v, depth - 1)
            if found is not None:
                return found
    return None


def _checkpoint_call(hooks) -> Optional[Any]:
    """The checkpoint call this code runs in (forward or recomputation), or None."""
    if hooks is not None and _CKPT_FRAME is not None:
        # Non-reentrant: the forward's pack hook holds the frame, the recomputation's a weakref
        # to it (inside a torch._dynamo.disable wrapper on torch 2.14).
        found = _frame_in_closure(hooks[0], 3)
        if found is not None:
            return found
    if _REENTRANT_CODES:
        f: Optional[FrameType] = sys._getframe(2)
        for _ in range(64):
            if f is None:
                break
            if f.f_code in _REENTRANT_CODES:
                return f.f_locals.get("ctx")
            f = f.f_back
    return None


def _attached(call, name: str) -> dict:
    """The dict stored on ``call`` under ``name`` (made on first use; AttributeError where the
    object takes no attributes)."""
    d = getattr(call, name, None)
    if d is None:
        d = {}
        setattr(call, name, d)
    return d


def untracked() -> bool:
    """True when :func:`take` would draw plainly (no checkpoint to record for or replay), so a
    caller may take the stream itself."""
    return _grad_enabled() and _top_hooks(False) is None and _graph_task() == -1


def in_checkpoint() -> bool:
    """True when a draw now would be recorded or replayed by :func:`take` (inside a checkpointed
    forward or its recomputation, or in a backward)."""
    if untracked():
        return False
    hooks = _top_hooks(False) if _grad_enabled() else None
    return _graph_task() != -1 or _checkpoint_call(hooks) is not None


def take(state: torch.Tensor, numel: int,
         taker: Callable[[torch.Tensor, int], Tuple[int, int]] = take_stream) -> Tuple[int, int]:
    """:func:`take_stream` (or ``taker``: a device-resident stream's words are taken by
    ``generator.take_words``), replayed for a checkpoint's recomputation (module docstring)."""
    hooks = None
    if _grad_enabled():
        hooks = _top_hooks(False)
        task = _graph_task()
        if hooks is None and task == -1:
            return taker(state, numel)  # the common case: not checkpointed
    else:
        task = _graph_task()
    call = _checkpoint_call(hooks)
    if call is None:
        return taker(state, numel)
    try:
        draws = _attached(call, _RECORD).setdefault(id(state), [])
    except AttributeError:  # an object that takes no attributes: a plain draw
        return taker(state, numel)
    if task == -1:  # the checkpointed forward: draw and record
        stream = taker(state, numel)
        draws.append(stream)
        return stream
    replayed = _attached(call, _REPLAYED)
    k = (task, id(state))
    i = replayed.get(k, 0)
    replayed[k] = i + 1
    if i < len(draws):
        return draws[i]  # the recomputation: the forward's i-th draw, the generator stays
    return taker(state, numel)

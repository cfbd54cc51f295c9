"""Activation checkpointing: the recomputation draws the forward's noise again.

``torch.utils.checkpoint`` runs a block's forward twice: once in the forward pass, again while
the autograd engine runs the backward. Both flavours save PyTorch's RNG state at the forward
and restore it before the recomputation (``preserve_rng_state=True``, the default), which is
how dropout repeats itself; a :class:`mollify_fast.Generator` is not PyTorch's RNG, so without
help the recomputation would draw new noise and advance the generator a second time.

So a draw from a Generator that may be inside a checkpointed forward is journaled under
``(generator, checkpoint call, CPU RNG state fingerprint, ordinal)``, and a draw made during a
backward under the same key returns the journaled stream without advancing the generator.
The checkpoint call is identified exactly: the non-reentrant flavour's ``_CheckpointFrame``
(reached from the saved-tensor hooks it installs, in the forward and in the recomputation
alike), the reentrant flavour's autograd ``ctx`` (from the ``CheckpointFunction`` frame on
the stack). Not covered: ``preserve_rng_state=False`` (the fingerprint differs, so the
recomputation draws fresh noise and advances the generator again), and more than
``_MAX_ENTRIES`` draws between a forward and its backward.

Cost: the common case (grad enabled, no saved-tensor hooks, not in a backward) is three
C calls (~0.4 us measured on the loaded dev VM); a possibly checkpointed draw adds
``torch.get_rng_state()``, a hash and a look for the checkpoint call, a few us.
"""
from __future__ import annotations

import sys
import weakref
from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.utils.checkpoint as _cp

from .generator import take_stream

_MAX_ENTRIES = 512  # journaled draws kept (oldest dropped first)
_journal: "OrderedDict[tuple, Tuple[int, int]]" = OrderedDict()
_counts: "OrderedDict[tuple, int]" = OrderedDict()  # draws so far per (pass, generator, call, fingerprint)

_grad_enabled = torch.is_grad_enabled
_top_hooks = torch._C._autograd._top_saved_tensors_default_hooks
_graph_task = torch._C._current_graph_task_id
_CKPT_FRAME = getattr(_cp, "_CheckpointFrame", None)
_REENTRANT = getattr(_cp, "CheckpointFunction", None)
_REENTRANT_CODES = tuple(
    f.__code__ for f in (getattr(_REENTRANT, "forward", None), getattr(_REENTRANT, "backward", None))
    if hasattr(f, "__code__")
)


def _frame_in_closure(fn, depth: int) -> Optional[int]:
    """id of a ``_CheckpointFrame`` that ``fn`` closes over (directly, through a weakref, or
    through a function it closes over, ``depth`` levels down), or None."""
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if type(v) is weakref.ReferenceType:
            v = v()
        if isinstance(v, _CKPT_FRAME):
            return id(v)
        if depth > 1 and callable(v) and getattr(v, "__closure__", None):
            found = _frame_in_closure(v, depth - 1)
            if found is not None:
                return found
    return None


def _checkpoint_call(hooks) -> Optional[int]:
    """An id of the checkpoint call this code runs in (forward or recomputation), or None."""
    if hooks is not None and _CKPT_FRAME is not None:
        # Non-reentrant: the forward's pack hook holds the frame, the recomputation's a weakref
        # to it (inside a torch._dynamo.disable wrapper on torch 2.14).
        found = _frame_in_closure(hooks[0], 3)
        if found is not None:
            return found
    if _REENTRANT_CODES:
        f = sys._getframe(2)
        for _ in range(64):
            if f is None:
                break
            if f.f_code in _REENTRANT_CODES:
                return id(f.f_locals.get("ctx"))
            f = f.f_back
    return None


def _bounded_set(d: OrderedDict, k, v) -> None:
    d[k] = v
    if len(d) > _MAX_ENTRIES:
        d.popitem(last=False)


def take(state: torch.Tensor, numel: int) -> Tuple[int, int]:
    """:func:`take_stream`, replayed for a checkpoint's recomputation (module docstring)."""
    hooks = None
    task = -1
    if _grad_enabled():
        hooks = _top_hooks(False)
        task = _graph_task()
        if hooks is None and task == -1:
            return take_stream(state, numel)  # the common case: not checkpointed
    else:
        task = _graph_task()
    call = _checkpoint_call(hooks)
    if call is None:
        return take_stream(state, numel)
    fp = hash(torch.get_rng_state().numpy().tobytes())
    ck = (task, id(state), call, fp)
    n = _counts.get(ck, 0)
    _bounded_set(_counts, ck, n + 1)
    key = (id(state), call, fp, n)
    if task != -1:  # the recomputation, during the backward
        hit = _journal.get(key)
        if hit is not None:
            return hit
        return take_stream(state, numel)
    stream = take_stream(state, numel)
    _bounded_set(_journal, key, stream)
    return stream

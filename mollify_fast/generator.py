"""Counter-based noise streams: :class:`Generator` and the default-generator seed draw.

A stream is ``(key, offset)`` (see README, "The noise stream"). This module keeps the
promise that one generator never hands the same counter groups to two calls:

* threads: the read-advance of the counter holds one module lock;
* processes: a generator records the process it belongs to. The first draw in any other
  process (a forked or spawned DataLoader worker, a distributed rank, a ``multiprocessing``
  child) derives its key from the parent's and a tag of that process: the DataLoader worker's ``seed``
  (different per worker and per epoch, and reproducible under ``torch.manual_seed``), the
  torch.distributed rank of a rank started by a launcher that had none, or else the process
  id. The parent's generator is never written by a child: a spawned child gets a copy of the
  numbers, not the parent's tensor;
* ranks: a Mollifier's stream derives its key from the torch.distributed rank (the process group's, else
  the ``RANK`` environment variable). While neither is known the stream draws as rank 0 and
  rechecks at each draw, so a process group created after the first draw still separates
  the ranks from then on (see README, "torch.distributed");
* copies: ``copy.deepcopy``, ``pickle`` and ``torch.save`` are checkpoints: the copy
  continues the original's stream from where it was copied (exactly as ``state_dict`` /
  ``load_state_dict``), belongs to the process that loads it, and advances on its own.
"""
from __future__ import annotations

import numbers
import os
import secrets
import threading
import warnings
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Dict, NamedTuple, Optional, SupportsInt, Tuple, Union, cast

import torch
import torch.utils.data

__all__ = [
    "Generator", "MASK64", "to_signed64", "to_unsigned64", "draw_default_seed", "groups_for",
    "take_stream", "torch_generator", "DeviceStream", "resident_words", "read_words", "take_words",
    "advance_resident",
]

MASK64 = (1 << 64) - 1

# Slots of the int64 state tensor that the custom op carries (bits of unsigned values are
# reinterpreted as signed). KEY is what the kernels get; it is derived from BASE (the seed
# the user set) once per process, at the first draw there, and cached while OWNER == pid.
# OWNER == -pid: a provisional key (the rank was not known yet), rechecked at each draw.
# RANK: the rank of the process that derived KEY (or that sent the generator), -1 unknown.
KEY, OFFSET, OWNER, HOME, BASE, FLAGS, RANK = range(7)
_SLOTS = 7
_PENDING = 1  # BASE not drawn yet: draw it from PyTorch's default CPU generator at first use
_RANK_KEY = 2  # derive the key from the torch.distributed rank (the Mollifier's streams)
_UNRANKED = 4  # drew as rank 0 before the rank was known (warned about if it turns out not 0)
_RANK_DOMAIN = 0x52414E4B << 32  # tags ranks apart from worker seeds and pids

# OWNER of a device-resident stream (Generator.to_device): never a pid (nor minus one), so the
# extension's atomic take (which needs OWNER == pid) always leaves it to take_stream.
_RESIDENT = -(1 << 62)

_PID = os.getpid()
_lock = threading.Lock()
_rank_at_fork = -1  # the forking process's rank (-1 unknown), for a child that inherits a stream
_DIST = torch.distributed.is_available()


def _group_probe() -> Union[Dict[str, Any], Callable[[], object]]:
    """Where a provisional stream looks, at every draw, for ``torch.distributed``'s default
    process group: the dict of attributes that holds it under ``"_default_pg"`` (None there, or
    no such key: no group yet), or, where this torch keeps it elsewhere, a callable that returns
    whether there is one (``torch.distributed.is_initialized`` itself).

    ``torch.distributed.is_initialized()`` answers by a property of a metaclass read through
    another property: in a training loop, with the caches cold after the step, that cost 10 us, a
    fifth of a small mollify call. The dict is the slot those properties read; the cpu launch call
    looks the group up in it itself (one dict lookup, no call), and only for a provisional
    stream."""
    if not _DIST:
        return {}
    try:
        from torch.distributed import distributed_c10d

        slots = vars(distributed_c10d._world)
    except (ImportError, AttributeError, TypeError):
        slots = None
    if type(slots) is dict and "_default_pg" in slots:
        return slots
    return torch.distributed.is_initialized


default_group = _group_probe()


def _group_initialized() -> bool:
    probe = default_group
    found = probe.get("_default_pg") if isinstance(probe, dict) else probe()
    return found is not None and found is not False


_TOP_BIT = 1 << 63
_WRAP = 1 << 64


def to_signed64(v: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``v`` (how streams travel in tensors)."""
    v &= MASK64
    return v - (1 << 64) if v >= (1 << 63) else v


def to_unsigned64(v: SupportsInt) -> int:
    return int(v) & MASK64


def groups_for(numel: int) -> int:
    """Counter groups one call consumes: each Philox call gives 4 normals."""
    return -(-int(numel) // 4)


def _mix64(z: int) -> int:
    """splitmix64's finaliser: turns (seed, counter) pairs into well-spread 64-bit seeds."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def derive_key(key: int, tag: int) -> int:
    """A new 64-bit key for ``tag`` (a rank, a worker seed, a pid) under ``key``."""
    return _mix64(key ^ _mix64(tag & MASK64))


def _known_rank() -> int:
    """This process's torch.distributed rank: the process group's, else the ``RANK`` environment
    variable (torchrun and most launchers set it before the group exists), else -1."""
    if _group_initialized():
        return torch.distributed.get_rank()
    try:
        return int(os.environ["RANK"])
    except (KeyError, ValueError):
        return -1


def _before_fork() -> None:
    global _rank_at_fork
    try:
        _rank_at_fork = _known_rank()
    except Exception:  # a fork hook must not raise; unknown is the safe answer
        _rank_at_fork = -1


def _after_fork_in_child() -> None:
    # The lock may have been held by another thread at the fork: that thread does not exist
    # in the child, so the child needs a fresh one.
    global _PID, _lock
    _PID = os.getpid()
    _lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _view(state: torch.Tensor):
    """A memoryview of the state's int64 words: element access is a plain CPython operation
    (where tensor indexing dispatches an op). A numpy view costs the same when its code is hot,
    but inside a training loop, with the caches cold after a step, each numpy scalar access
    costs many times more (README, "Inside a training loop").

    Cached on the tensor with the address it views. Anything that gives the tensor new
    memory (``share_memory_()``, a copy of the tensor with its ``__dict__``) changes
    ``data_ptr()``, so a stale view is never used (the old code wrote into freed memory after
    a generator was sent to a spawned process).
    """
    cached = state.__dict__.get("_mf_view")
    ptr = state.data_ptr()
    if cached is not None and cached[1] == ptr:
        return cached[0]
    try:
        v: Union[memoryview, torch.Tensor] = memoryview(state.numpy())  # type: ignore[arg-type]  # numpy: __buffer__ on Python >= 3.12 only
    except (RuntimeError, TypeError):  # no numpy here, or a tensor numpy refuses
        v = state
    state._mf_view = (v, ptr)  # type: ignore[attr-defined]  # our cache, in the tensor's __dict__
    return v


def _derive(v, settle: bool = False) -> None:
    """First draw in this process, or a draw with a provisional key: compute KEY (caller holds
    the lock). ``settle``: an inherited stream becomes this process's own now (a copy is taken).
    """
    if int(v[OWNER]) == -_PID and not settle and not _group_initialized():
        return  # provisional, and still no process group: keep the key (one check per draw)
    _fix_seed(v)
    flags = int(v[FLAGS])
    key = to_unsigned64(v[BASE])
    rank_key = flags & _RANK_KEY
    provisional = False
    if int(v[HOME]) != _PID:  # inherited from the process that made, loaded or sent it
        parent_rank = int(v[RANK]) if int(v[RANK]) >= 0 else _rank_at_fork
        info = torch.utils.data.get_worker_info()
        rank = _known_rank() if info is None and parent_rank < 0 else -1
        if rank >= 0 and rank_key:
            # A rank started by a launcher that had none (fork or spawn): the stream is this
            # rank's, as if the Mollifier had been made here; its checkpoint keeps the
            # base seed, so every rank resumes its own stream.
            v[HOME] = _PID
        else:
            if rank_key and parent_rank > 0:
                key = derive_key(key, parent_rank)  # a worker of rank r: the rank's stream, then its own
            if info is not None:
                tag = int(info.seed)
            elif rank >= 0:
                tag = _RANK_DOMAIN ^ rank
            else:  # a child of a rank, or of a process whose rank is not known (yet): its pid
                tag = _PID
                provisional = parent_rank < 0 and not settle
            key = derive_key(key, tag)
            if not provisional:
                # From now on this is this process's own stream: a copy sent on from here, or a
                # checkpoint taken here, continues it.
                v[BASE] = to_signed64(key)
                v[HOME] = _PID
                flags &= ~_RANK_KEY
                rank_key = 0
            rank = -1
    else:
        rank = _known_rank() if rank_key else -1
    if rank_key and int(v[HOME]) == _PID:
        if rank < 0:
            provisional = not settle
            flags |= _UNRANKED
        else:
            if flags & _UNRANKED and rank:
                warnings.warn(
                    f"mollify_fast: this Mollifier drew noise before the torch.distributed rank was "
                    f"known (no process group, no RANK environment variable); those draws were rank "
                    f"0's stream on every rank. From now on rank {rank} draws its own. Create the "
                    f"process group (or set RANK) before the first draw", RuntimeWarning, stacklevel=4)
            flags &= ~_UNRANKED
            key = derive_key(key, rank) if rank else key
    v[RANK] = rank
    v[KEY] = to_signed64(key)
    v[FLAGS] = flags
    v[OWNER] = -_PID if provisional else _PID


def _fix_seed(v) -> None:
    """Draw a pending seed now (caller holds the lock); the key is derived at the next draw."""
    if int(v[FLAGS]) & _PENDING:
        v[BASE] = to_signed64(draw_default_seed(torch.device("cpu")))
        v[FLAGS] = int(v[FLAGS]) & ~_PENDING
        v[OWNER] = 0


class DeviceStream(NamedTuple):
    """A stream the kernels read from memory instead of receiving it by value (README, "CUDA
    graphs"): ``words`` is an int64 tensor ``[key, offset]`` (the unsigned values' bits) on the
    launch's device. A captured CUDA graph then draws from wherever the stream is at each replay;
    the call advances ``words[1]`` on the device after its kernels (a generator's stream), or
    not at all (a key drawn on the device for the call)."""
    words: torch.Tensor


def resident_words(state: torch.Tensor) -> Optional[torch.Tensor]:
    """The device words ``[key, offset]`` of a generator state made device-resident by
    :meth:`Generator.to_device`, else None."""
    return state.__dict__.get("_mf_words")


def _pull(state: torch.Tensor, v) -> Optional[torch.Tensor]:
    """For a device-resident stream: copy the device's offset into the host state (a device
    sync; caller holds the lock) and return the words; else None."""
    words = state.__dict__.get("_mf_words")
    if words is not None:
        v[OFFSET] = int(words[1])
    return words


def read_words(words: torch.Tensor) -> Tuple[int, int]:
    """``(key, offset)`` of a device-resident stream, read back to the host (a sync)."""
    key, offset = words.tolist()
    return to_unsigned64(key), to_unsigned64(offset)


def take_words(words: torch.Tensor, numel: int) -> Tuple[int, int]:
    """A host-side draw from a device-resident stream's words (a backend whose kernels take the
    stream by value, another device, a CPU call): ``(key, offset)`` read back (a sync), then the
    words advanced in stream order. The host state is not written: its readers read the words."""
    with _lock:
        stream = read_words(words)
        advance_resident(words, numel)
    return stream


def advance_resident(words: torch.Tensor, numel: int) -> None:
    """After a call's kernels: move a device-resident stream past the call's counter groups, on
    the device, in stream order (captured into a CUDA graph, every replay advances it)."""
    words[1:].add_((int(numel) + 3) >> 2)


try:  # the compiled extension's atomic take (None without it: then every take holds the lock)
    from ._C import take_stream as _atomic_take
except ImportError:
    _atomic_take = None


def provisional_ok() -> bool:
    """True while a provisional key (OWNER == -pid: the rank was not known at the first draw)
    stays as it is: no process group yet (the condition under which :func:`_derive` keeps it)."""
    return not _group_initialized()


def take_stream(state: torch.Tensor, numel: int) -> Tuple[int, int]:
    """Read ``(key, offset)`` from a generator state tensor and advance it past one call.

    Atomic under threads; the first call in a process derives the key here, under a lock. With
    the compiled extension, the advance of a derived stream is one atomic step in C++ (the same
    one the cpu and cuda fast paths take inside their launch call), so it never races them.
    """
    if _atomic_take is not None:  # a derived (or still valid provisional) stream: no lock, no view
        taken = _atomic_take(state.data_ptr(), numel, provisional_ok())
        if taken is not None:
            return taken
    # Inlined to_unsigned64 / groups_for / to_signed64: this runs on every call, where three
    # function calls are a tenth of a small eager call.
    words = state.__dict__.get("_mf_words")
    if words is not None:  # device-resident (its OWNER fails the atomic take): a host-side draw
        return take_words(words, numel)
    with _lock:
        v = _view(state)
        if v[OWNER] != _PID:
            _derive(v)
        if _atomic_take is not None:
            taken = _atomic_take(state.data_ptr(), numel, provisional_ok())
            if taken is not None:
                return taken
        key = int(v[KEY]) & MASK64
        offset = int(v[OFFSET]) & MASK64
        nxt = (offset + ((int(numel) + 3) >> 2)) & MASK64
        v[OFFSET] = nxt - _WRAP if nxt >= _TOP_BIT else nxt
    return key, offset


class Generator:
    """A Philox4x32-10 noise stream ``(seed, offset)`` shared by every compiled backend.

    ``seed`` is a 64-bit unsigned integer (the Philox key); ``offset`` is a 64-bit counter
    that each ``mollify`` call advances by ``ceil(numel / 4)``, the number of 4-normal groups
    it drew. Two calls with generators in the same state draw the same noise on every backend
    but ``torch`` (which uses PyTorch's own RNG seeded from the stream). ``seed=None`` draws
    the seed from PyTorch's default CPU generator at the first draw (so ``torch.manual_seed``
    makes it reproducible); until then ``seed`` is None.

    Threads and processes: two threads never get the same counter groups. A generator that
    reaches another process (a DataLoader worker, forked or spawned; a ``multiprocessing``
    child) draws a stream of its own there: its key is derived from the worker's seed
    (``torch.utils.data.get_worker_info().seed``: different per worker and per epoch,
    reproducible under ``torch.manual_seed``) or, outside DataLoader workers, the process id.
    The parent's generator is not changed by its children.

    Copies: ``copy.deepcopy``, ``pickle`` and ``torch.save`` / ``torch.load`` (with
    ``weights_only=False``, or inside ``torch.serialization.safe_globals([Generator])``) are
    checkpoints: the copy continues the stream from where the original was when copied
    (the original and the copy draw the same numbers, as ``state_dict()`` /
    ``load_state_dict()`` do), belongs to the process that loads it and advances on its own.

    The state lives in a CPU int64 tensor (``_state``), so the op can take it as an argument
    and advance it in place, also under ``torch.compile``, without specialising on Python
    integers.

    Example::

        g = mollify_fast.Generator(1234)
        y = mollify_fast.mollify(x, 0.5, generator=g)
        ckpt = g.state_dict()          # {'seed': 1234, 'offset': ceil(x.numel() / 4)}
    """

    _words: Optional[torch.Tensor] = None  # the device-resident stream's words (to_device), else None

    def __init__(self, seed: Optional[int] = 0, offset: int = 0) -> None:
        self._state = torch.zeros(_SLOTS, dtype=torch.int64)
        self._words = None
        self.manual_seed(seed, offset)

    @staticmethod
    def _check(name: str, v: Any) -> int:
        if torch.is_tensor(v) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
            # uint64 values past 2**63 do not convert through int64: read their bits.
            v = int(v.view(torch.int64)) & MASK64 if v.dtype == torch.uint64 else int(v)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"Generator: {name} must be an int, got {type(v).__name__}")
        v = int(v)
        if not 0 <= v <= MASK64:
            raise ValueError(f"Generator: {name} must be in [0, 2**64), got {v}")
        return v

    def manual_seed(self, seed: Optional[int], offset: int = 0) -> "Generator":
        """Restart at ``(seed, offset)``; ``seed=None``: drawn from PyTorch's at the next draw.

        The stream becomes this process's; its key is derived at the next draw. A
        Mollifier's stream stays per-rank.
        """
        offset = self._check("offset", offset)
        words = self._words  # an attribute, not the tensor's __dict__: traceable by torch.compile
        if words is not None:  # restart on the host, then on the device again, in the same words
            self._to_host()
            self.manual_seed(seed, offset)
            self._make_resident(words.device, words)
            return self
        pending = seed is None
        base = 0 if pending else self._check("seed", seed)
        new = torch.tensor([0, to_signed64(offset), 0, _PID, to_signed64(base), _PENDING if pending else 0, -1],
                           dtype=torch.int64)
        # Tensor ops, not int(): a Generator made inside a compiled function stays traceable.
        new[FLAGS] |= self._state[FLAGS] & _RANK_KEY
        if torch.compiler.is_compiling():  # the compiler cannot enter a lock; it runs one thread
            self._state.copy_(new)
        else:
            with _lock:
                self._state.copy_(new)
        return self

    @property
    def seed(self) -> Union["_Seed", "_PendingSeed"]:
        """``g.seed()`` (torch.Generator's meaning): reseed from the operating system's entropy,
        offset 0, and return the new seed.

        Backwards compatibility: ``seed`` used to be a read-only property holding the seed. Read
        as a value (``g.seed == 5``, ``int(g.seed)``) it still is the seed (an ``int`` that can
        also be called), or, before the first draw of ``Generator(None)``, an object equal to
        None (``g.seed is None`` no longer holds: use ``g.state_dict()['seed'] is None``).
        Prefer :meth:`initial_seed` to read it.
        """
        s = self._state.tolist()
        if s[FLAGS] & _PENDING:
            return _PendingSeed(self)
        return _Seed(to_unsigned64(s[BASE]), self)

    def _reseed(self) -> int:
        new = secrets.randbits(64)
        self.manual_seed(new)
        return new

    def initial_seed(self) -> int:
        """The seed (the base 64-bit key), as ``torch.Generator.initial_seed()``. For
        ``Generator(None)`` before its first draw, the seed is drawn now from PyTorch's default
        CPU generator (as that draw would have), so the value returned is the one it uses."""
        with _lock:
            v = _view(self._state)
            _fix_seed(v)
            return to_unsigned64(v[BASE])

    @property
    def device(self) -> torch.device:
        """Always the CPU: the state is a CPU tensor whichever device the noise is drawn on."""
        return torch.device("cpu")

    def _host(self) -> list:
        """The state's words, the offset read back from the device first when device-resident."""
        if self._words is not None:
            with _lock:
                _pull(self._state, _view(self._state))
        return self._state.tolist()

    def to_device(self, device: Union[str, torch.device, int]) -> "Generator":
        """Make the stream device-resident on a CUDA device, for CUDA graphs (README, "CUDA graphs").

        From then on a call on that device reads ``(key, offset)`` from device memory and advances
        the offset there, after its kernels, in stream order: a call captured by
        ``torch.cuda.graph`` (or ``torch.compile``'s ``"reduce-overhead"`` / ``"max-autotune"``)
        draws fresh noise at every replay, replay ``k`` exactly the noise the ``k``-th eager call
        would have drawn, and no call syncs with the host. Reading the position (``offset``,
        ``state_dict()``, a copy) or drawing on the host (a CPU call, another device) first waits
        for the device and reads it back (one sync). ``to_device("cpu")`` brings the stream back
        to the host. Call it outside any capture (before the warm-up), once the
        ``torch.distributed`` process group exists if the key is per-rank (a Mollifier's): the
        key is fixed here. A ``Mollifier`` moved with ``.to(device)`` / ``.cuda()`` does this for
        its generator. Returns ``self``."""
        dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.type == "cpu":
            self._to_host()
            return self
        if dev.type != "cuda":
            raise ValueError(f"Generator.to_device: device must be a CUDA device or 'cpu', got {dev}")
        if self._words is not None and self._words.device == dev:
            return self  # already there (its words keep their address: captured graphs hold it)
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("Generator.to_device: called during CUDA graph capture; make the generator "
                               "device-resident before capturing (and before the warm-up calls)")
        self._make_resident(dev)
        return self

    def _make_resident(self, dev: torch.device, words: Optional[torch.Tensor] = None) -> None:
        """Device words for ``dev`` (any device: the host-run CUDA driver and the Triton
        interpreter read CPU words, which is how the CPU tests run this path). ``words``: refill
        these (a restart of a resident stream), so that a CUDA graph captured with them, which
        holds their address, draws the restarted stream."""
        self._to_host()
        key, offset = take_stream(self._state, 0)  # derives the key here (advances nothing)
        new = torch.tensor([to_signed64(key), to_signed64(offset)], dtype=torch.int64)
        if words is not None and words.device == dev:
            words.copy_(new)
        else:
            words = new.to(dev)
            try:  # a static input of compiled graphs: a CUDA graph may mutate it in place
                torch._dynamo.mark_static_address(words)
            except Exception:  # noqa: BLE001 - an optimisation hint only
                pass
        with _lock:
            self._state._mf_words = words  # type: ignore[attr-defined]  # in the tensor's __dict__, as _mf_view
            self._words = words
            _view(self._state)[OWNER] = _RESIDENT

    def _to_host(self) -> None:
        with _lock:
            v = _view(self._state)
            if _pull(self._state, v) is not None:
                del self._state._mf_words  # type: ignore[attr-defined]
                self._words = None
                v[OWNER] = _PID

    @property
    def resident_device(self) -> Optional[torch.device]:
        """The device whose memory holds the stream position (:meth:`to_device`), or None (the host)."""
        return None if self._words is None else self._words.device

    def get_state(self) -> torch.Tensor:
        """The position as a CPU int64 tensor ``[seed, offset, pending]`` (64-bit values as
        their int64 bits; ``pending`` 1 for a seed not drawn yet), for :meth:`set_state`."""
        s = self._host()
        return torch.tensor([s[BASE], s[OFFSET], s[FLAGS] & _PENDING], dtype=torch.int64)

    def set_state(self, state: torch.Tensor) -> "Generator":
        """Restart at a position from :meth:`get_state` (as :meth:`load_state_dict` does)."""
        if not torch.is_tensor(state) or state.dtype != torch.int64:
            raise TypeError(f"Generator.set_state: state must be the int64 tensor from get_state(), got "
                            f"{state.dtype if torch.is_tensor(state) else type(state).__name__}")
        if state.shape != (3,) or int(state[2]) not in (0, 1):
            raise ValueError(f"Generator.set_state: state must be get_state()'s [seed, offset, pending], "
                             f"got {state.tolist()}")
        seed, offset, pending = state.tolist()
        return self.manual_seed(None if pending else to_unsigned64(seed), to_unsigned64(offset))

    @property
    def offset(self) -> int:
        """The counter offset (read back from the device when device-resident: a sync)."""
        return to_unsigned64(self._host()[OFFSET])

    def state_dict(self) -> Dict[str, Optional[int]]:
        """``{'seed': ..., 'offset': ...}``: plain ints (None for a seed not drawn yet)."""
        s = self._host()
        seed = None if s[FLAGS] & _PENDING else to_unsigned64(s[BASE])
        return {"seed": seed, "offset": to_unsigned64(s[OFFSET])}

    def load_state_dict(self, state: Dict[str, Optional[int]]) -> None:
        if not isinstance(state, dict) or set(state) != {"seed", "offset"}:
            raise ValueError(
                "Generator.load_state_dict: state must be a dict with keys 'seed' and 'offset' "
                f"(from Generator.state_dict()), got {state!r}"
            )
        self.manual_seed(state["seed"], cast(int, state["offset"]))

    def _key_per_rank(self) -> None:
        """Make this a per-rank stream (a Mollifier's): on torch.distributed rank r != 0 it
        draws with key ``derive_key(seed, r)``, the rank read at the next draw. ``seed`` and
        ``state_dict()`` keep the base seed, so every rank can load one checkpoint."""
        with _lock:
            v = _view(self._state)
            v[FLAGS] = int(v[FLAGS]) | _RANK_KEY
            v[OWNER] = 0
            v[RANK] = -1

    def clone(self) -> "Generator":
        """A copy that continues this stream (the same as ``copy.deepcopy``)."""
        g = Generator.__new__(Generator)
        g.__setstate__(self.__getstate__())
        return g

    # -- copies: a snapshot of the numbers, never the tensor -----------------------------
    def _snapshot(self, checkpoint: bool = False) -> Dict[str, int]:
        with _lock:
            v = _view(self._state)
            _pull(self._state, v)  # a device-resident stream: its position now (the copy is on the host)
            if int(v[HOME]) != _PID:
                _derive(v, settle=True)  # inherited: become this process's stream first
            if checkpoint:
                _fix_seed(v)  # the copy must continue this stream: the same seed for both
            return {"base": int(v[BASE]), "offset": int(v[OFFSET]), "flags": int(v[FLAGS]) & (_PENDING | _RANK_KEY),
                    "rank": int(v[RANK])}

    def __getstate__(self) -> Dict[str, int]:
        s = self._snapshot(checkpoint=True)
        del s["rank"]  # a checkpoint takes the rank of whichever process loads it
        return s

    def __setstate__(self, s: Dict[str, int]) -> None:
        self._words = None
        self._state = torch.tensor([0, s["offset"], 0, _PID, s["base"], s["flags"], -1], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"mollify_fast.Generator(seed={self.state_dict()['seed']}, offset={self.offset})"


class _Seed(int):
    """``Generator.seed`` read as a value: the seed (an int); called: ``Generator.seed()``."""

    _generator: Generator

    def __new__(cls, value: int, generator: Generator) -> "_Seed":
        obj = super().__new__(cls, value)
        obj._generator = generator
        return obj

    def __call__(self) -> int:
        return self._generator._reseed()

    def __reduce__(self) -> Tuple[type, Tuple[int]]:
        return int, (int(self),)  # pickles as the plain number


class _PendingSeed:
    """``Generator.seed`` before the first draw of ``Generator(None)``: equal to None, callable."""

    __slots__ = ("_generator",)

    def __init__(self, generator: Generator):
        self._generator = generator

    def __call__(self) -> int:
        return self._generator._reseed()

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, _PendingSeed)

    __hash__ = None  # type: ignore[assignment]  # unhashable (equal to None, not its hash)

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "None"


def _rebuild_live(s: Dict[str, int], home: int, rank: int) -> Generator:
    """A generator sent to another process: still the sender's, so its first draw here derives
    a stream of this process's own."""
    g = Generator.__new__(Generator)
    g._words = None
    g._state = torch.tensor([0, s["offset"], 0, home, s["base"], s["flags"], rank], dtype=torch.int64)
    return g


def _reduce_live(g: Generator):
    s = g._snapshot()
    rank = s.pop("rank")
    if rank < 0:
        rank = _known_rank()  # the child has no process group: send the sender's rank (-1 unknown)
    return _rebuild_live, (s, _PID, rank)


# multiprocessing pickles with ForkingPickler what it sends to a spawned process or through
# a queue (a spawned DataLoader worker's dataset). Its reducers take precedence over
# __getstate__, and PyTorch's reducer for tensors moves them to shared memory: this one sends
# numbers instead, so the child neither shares the parent's counter nor replaces its memory.
ForkingPickler.register(Generator, _reduce_live)


_tls = threading.local()


def torch_generator(device: torch.device, stream: Optional[Tuple[int, int]]) -> Optional[torch.Generator]:
    """The ``torch.Generator`` the ``torch`` backend draws one call's noise from.

    Seeded from ``mix(seed ^ mix(offset))``, so a stream position gives the same numbers
    every time. One generator per device *per thread* (creating one per call costs a few us;
    one shared per device let two threads reseed it under each other's draws).
    ``stream=None`` returns None: PyTorch's default generator for the device.
    """
    if stream is None:
        return None
    gens = _tls.__dict__.setdefault("gens", {})
    g = gens.get(device)
    if g is None:
        g = gens[device] = torch.Generator(device=device)
    seed, offset = stream
    g.manual_seed(_mix64(seed ^ _mix64(offset)))
    return g


def draw_default_seed(device: torch.device) -> int:
    """A fresh 64-bit seed from PyTorch's default generator for ``device``.

    CPU: two 32-bit draws from the default CPU generator. CUDA: reading a random number
    from the device would synchronise the stream, so the seed is derived on the host from
    the CUDA default generator's ``initial_seed()`` and its Philox offset, which is then
    advanced by 4 (one Philox group) so the next call gets a different seed. Either way,
    ``torch.manual_seed`` makes the sequence of seeds, and so the noise, reproducible.
    """
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        g = torch.cuda.default_generators[idx]
        off = g.get_offset()
        g.set_offset(off + 4)
        return _mix64(_mix64(g.initial_seed()) ^ off)
    hi, lo = torch.randint(0, 1 << 32, (2,), dtype=torch.int64).tolist()
    return (hi << 32) | lo

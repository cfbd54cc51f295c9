"""Counter-based noise streams: :class:`Generator` and the default-generator seed draw."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

__all__ = ["Generator", "MASK64", "to_signed64", "to_unsigned64", "draw_default_seed", "groups_for"]

MASK64 = (1 << 64) - 1


def to_signed64(v: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``v`` (how streams travel in tensors)."""
    v &= MASK64
    return v - (1 << 64) if v >= (1 << 63) else v


def to_unsigned64(v: int) -> int:
    return int(v) & MASK64


def groups_for(numel: int) -> int:
    """Counter groups one call consumes: each Philox call gives 4 normals."""
    return -(-int(numel) // 4)


class Generator:
    """A Philox4x32-10 noise stream ``(seed, offset)`` shared by every compiled backend.

    ``seed`` is a 64-bit unsigned integer (the Philox key); ``offset`` is a 64-bit counter
    that each ``mollify`` call advances by ``ceil(numel / 4)``, the number of 4-normal groups
    it drew. Two calls with generators in the same state draw the same noise on every backend
    but ``torch`` (which uses PyTorch's own RNG and ignores the stream).

    The state lives in a CPU int64 tensor ``[seed, offset]`` (bits reinterpreted as signed),
    so the op can take it as an argument and advance it in place, also under
    ``torch.compile``, without specialising on Python integers.

    Example::

        g = mollify_fast.Generator(1234)
        y = mollify_fast.mollify(x, 0.5, generator=g)
        ckpt = g.state_dict()          # {'seed': 1234, 'offset': ceil(x.numel() / 4)}
    """

    def __init__(self, seed: int = 0, offset: int = 0):
        self._state = torch.zeros(2, dtype=torch.int64)
        self.manual_seed(seed, offset)

    def _check(self, name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            if torch.is_tensor(v) and v.dim() == 0 and not v.is_floating_point():
                v = int(v)
            else:
                raise TypeError(f"Generator: {name} must be an int, got {type(v).__name__}")
        if not 0 <= v <= MASK64:
            raise ValueError(f"Generator: {name} must be in [0, 2**64), got {v}")
        return v

    def manual_seed(self, seed: int, offset: int = 0) -> "Generator":
        seed = self._check("seed", seed)
        offset = self._check("offset", offset)
        self._state[0] = to_signed64(seed)
        self._state[1] = to_signed64(offset)
        return self

    @property
    def seed(self) -> int:
        return to_unsigned64(int(self._state[0]))

    @property
    def offset(self) -> int:
        return to_unsigned64(int(self._state[1]))

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.seed, "offset": self.offset}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if not isinstance(state, dict) or set(state) != {"seed", "offset"}:
            raise ValueError("Generator.load_state_dict: state must be a dict with keys 'seed' and 'offset'")
        self.manual_seed(state["seed"], state["offset"])

    def clone(self) -> "Generator":
        return Generator(self.seed, self.offset)

    def __repr__(self) -> str:
        return f"mollify_fast.Generator(seed={self.seed}, offset={self.offset})"


def take_stream(state: torch.Tensor, numel: int) -> Tuple[int, int]:
    """Read ``(seed, offset)`` from a generator state tensor and advance it past one call."""
    # A numpy view of the state, kept on the tensor: element access costs ~0.1 us where tensor
    # indexing costs ~5, and making the view costs ~3 on the dev VM.
    v = state.__dict__.get("_mf_view")
    if v is None:
        try:
            v = state.numpy()
        except (RuntimeError, TypeError):  # no numpy in this environment
            v = state
        state._mf_view = v
    seed, offset = to_unsigned64(int(v[0])), to_unsigned64(int(v[1]))
    v[1] = to_signed64(offset + groups_for(numel))
    return seed, offset


def _mix64(z: int) -> int:
    """splitmix64's finaliser: turns (seed, counter) pairs into well-spread 64-bit seeds."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


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

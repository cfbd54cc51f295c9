"""``Mollifier``: the one line in a training loop (``x = mol(x, step)``)."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Union

import torch

from . import schedules
from .generator import Generator, _mix64
from .mollify import mollify

MODES = ("noise", "blur", "noise+blur")


def _dist_rank() -> int:
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank()
    return 0


class Mollifier:
    r"""Anneal data mollification over the first ``mollify_steps`` training steps.

    For ``step < mollify_steps``, with ``u = step / mollify_steps`` and
    ``gamma = schedule(u)`` (the noise variance, from 1 down to ~0):

    * ``"noise"``: ``x_t = sqrt(1 - gamma) * x + sqrt(gamma) * eps``;
    * ``"blur"``: ``x_t = B_s(x)`` with ``s = blur_sigma_max * sqrt(gamma)``;
    * ``"noise+blur"``: ``x_t = sqrt(1 - gamma) * B_s(x) + sqrt(gamma) * eps``, in one pass.

    For ``step >= mollify_steps`` it returns ``x`` itself: no copy, no kernel.

    Args:
        mollify_steps: length of the annealing window (> 0).
        schedule: ``"sigmoid"`` (the paper's), ``"linear"``, ``"cosine"``, or a callable
            ``u -> gamma``; ``schedule_kwargs`` go to it.
        mode: ``"noise"``, ``"blur"`` or ``"noise+blur"``.
        blur_sigma_max: blur sigma at step 0 (pixels); required by the blur modes.
        generator: a :class:`Generator`. Default: a stream seeded from PyTorch's default CPU
            generator when first used, with the ``torch.distributed`` rank folded into the
            seed, so ranks draw different noise while following the same schedule.
        backend: passed to :func:`mollify`.

    ``state_dict()`` / ``load_state_dict()`` carry the stream, so a run resumed at step k
    draws exactly the noise the uninterrupted run draws from step k.
    """

    def __init__(
        self,
        mollify_steps: int,
        schedule: Union[str, Callable] = "sigmoid",
        mode: str = "noise",
        blur_sigma_max: Optional[float] = None,
        generator: Optional[Generator] = None,
        backend: str = "auto",
        **schedule_kwargs: Any,
    ):
        if isinstance(mollify_steps, bool) or not isinstance(mollify_steps, int):
            raise TypeError(f"Mollifier: mollify_steps must be an int, got {type(mollify_steps).__name__}")
        if mollify_steps <= 0:
            raise ValueError(f"Mollifier: mollify_steps must be > 0, got {mollify_steps}")
        if mode not in MODES:
            raise ValueError(f"Mollifier: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode != "noise":
            if blur_sigma_max is None or not (math.isfinite(blur_sigma_max) and blur_sigma_max > 0):
                raise ValueError(
                    f"Mollifier: mode {mode!r} needs blur_sigma_max > 0 (the blur sigma at step 0), "
                    f"got {blur_sigma_max}"
                )
        if generator is not None and not isinstance(generator, Generator):
            raise TypeError(f"Mollifier: generator must be a mollify_fast.Generator, got {type(generator).__name__}")
        self.schedule_name = schedule if isinstance(schedule, str) else getattr(schedule, "__name__", "custom")
        self._gamma = schedules.get(schedule)
        self.schedule_kwargs = dict(schedule_kwargs)
        self._gamma(0.5, **self.schedule_kwargs)  # a bad keyword fails here, not mid-training
        self.mollify_steps = mollify_steps
        self.mode = mode
        self.blur_sigma_max = blur_sigma_max
        self.backend = backend
        self.generator = generator

    def _stream(self) -> Generator:
        if self.generator is None:
            base = int(torch.randint(0, 1 << 62, (), dtype=torch.int64))
            rank = _dist_rank()
            seed = _mix64(base ^ _mix64(rank)) if rank else base
            self.generator = Generator(seed)
        return self.generator

    def gamma(self, step: int) -> float:
        """The noise variance at ``step`` (0 from ``mollify_steps`` on)."""
        self._check_step(step)
        if step >= self.mollify_steps:
            return 0.0
        return float(self._gamma(step / self.mollify_steps, **self.schedule_kwargs))

    @staticmethod
    def _check_step(step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"Mollifier: step must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"Mollifier: step must be >= 0, got {step}")

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        g = self.gamma(step)
        if step >= self.mollify_steps:
            return x
        gen = self._stream()
        sigma = math.sqrt(g)
        if self.mode == "noise":
            return mollify(x, sigma, generator=gen, backend=self.backend)
        blur = self.blur_sigma_max * sigma
        if self.mode == "blur":
            return mollify(x, 0.0, blur_sigma=blur, generator=gen, backend=self.backend)
        return mollify(x, sigma, blur_sigma=blur, generator=gen, backend=self.backend)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "mollify_steps": self.mollify_steps,
            "schedule": self.schedule_name,
            "schedule_kwargs": dict(self.schedule_kwargs),
            "mode": self.mode,
            "blur_sigma_max": self.blur_sigma_max,
            "generator": self._stream().state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or "generator" not in state:
            raise ValueError("Mollifier.load_state_dict: state must come from Mollifier.state_dict()")
        for key in ("mollify_steps", "mode", "blur_sigma_max"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"Mollifier.load_state_dict: {key} is {getattr(self, key)!r} here but "
                    f"{state[key]!r} in the checkpoint"
                )
        if self.generator is None:
            self.generator = Generator(0)
        self.generator.load_state_dict(state["generator"])

    def __repr__(self) -> str:
        return (
            f"Mollifier(mollify_steps={self.mollify_steps}, schedule={self.schedule_name!r}, "
            f"mode={self.mode!r}, blur_sigma_max={self.blur_sigma_max})"
        )

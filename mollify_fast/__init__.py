"""mollify_fast: data mollification (``x_t = alpha * B(x) + sigma * eps``) in one fused pass.

Public API::

    mollify(x, sigma, *, alpha=None, blur_sigma=None, blur_radius=None,
            generator=None, out=None, return_noise=False, backend="auto")
    Generator(seed, offset=0)
    Mollifier(mollify_steps, schedule="sigmoid", mode="noise", blur_sigma_max=None, ...)
    schedules.sigmoid / linear / cosine
    reference                   the exact pure-PyTorch oracle
    MAX_BLUR_RADIUS             the largest blur radius a call accepts (2**20)
    available_backends()        {name: (available, reason)}
    ExtensionMissingWarning     warned once when a call finds the compiled extension missing

Nothing here imports Triton or touches CUDA at import time.
"""
from typing import Dict, Tuple

from . import reference, schedules
from ._blur import MAX_BLUR_RADIUS
from .backends import BACKENDS, BackendUnavailableError
from .backends._native import ExtensionMissingWarning
from .generator import Generator
from .mollifier import Mollifier
from ._op import last_backend, mollify

__version__ = "0.1.0"

__all__ = [
    "mollify",
    "Generator",
    "Mollifier",
    "schedules",
    "reference",
    "available_backends",
    "BackendUnavailableError",
    "ExtensionMissingWarning",
    "last_backend",
    "MAX_BLUR_RADIUS",
    "__version__",
]


def available_backends() -> Dict[str, Tuple[bool, str]]:
    """``{name: (available, reason)}`` for every backend in this process."""
    from .backends import availability

    return {name: availability(name) for name in BACKENDS}

"""The ``cpu`` backend: not part of this build yet (see the project's issues)."""
from typing import Tuple


def availability() -> Tuple[bool, str]:
    return False, "not implemented in this version"


def supports(x, params) -> Tuple[bool, str]:
    return False, "not implemented in this version"

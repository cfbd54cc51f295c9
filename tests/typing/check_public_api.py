"""The public API's static types, checked by mypy (``make typecheck``), not collected by pytest.

Each ``assert_type`` fails the mypy run when the checker infers another type for the call:
``mollify`` on ``return_noise`` (README, "The contract, in short"), the schedules on a float,
an ndarray and a tensor, ``Mollifier.__call__`` and the ``Generator`` methods. Run as a script
it makes the same calls, so the calls it types are calls that work.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from typing_extensions import assert_type

import mollify_fast as mf
from mollify_fast import schedules
from mollify_fast.mollifier import Mollifier


def check(flag: bool) -> None:
    x = torch.zeros(2, 3, 4, 4)
    g = mf.Generator(1234)

    assert_type(mf.mollify(x, 0.5), torch.Tensor)
    assert_type(mf.mollify(x, 0.5, return_noise=False, generator=g), torch.Tensor)
    assert_type(mf.mollify(x, 0.5, return_noise=True), Tuple[torch.Tensor, torch.Tensor])
    assert_type(mf.mollify(x, torch.full((2,), 0.5), alpha=1.0, blur_sigma=0.5, return_noise=True),
                Tuple[torch.Tensor, torch.Tensor])
    assert_type(mf.mollify(x, 0.5, return_noise=flag), Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]])
    assert_type(mf.mollify(x, 0.5, noise=torch.randn_like(x)), torch.Tensor)
    assert_type(mf.mollify(x, 0.5, noise=torch.randn_like(x), return_noise=True), Tuple[torch.Tensor, torch.Tensor])

    for f in (schedules.sigmoid, schedules.linear, schedules.cosine):
        assert_type(f(0.5), float)
        assert_type(f(torch.linspace(0, 1, 5)), torch.Tensor)
        assert_type(f(np.linspace(0, 1, 5)), np.ndarray)
    assert_type(schedules.sigmoid(0.25, start=-3.0, end=3.0, tau=1.0), float)
    u32: np.float32 = np.float32(0.25)  # (numpy types its scalar constructors' results as Any)
    assert_type(schedules.linear(u32), float)

    mol = Mollifier(10, "cosine")
    assert_type(mol(x, 3), torch.Tensor)
    assert_type(mol(x, 3, noise=torch.randn_like(x)), torch.Tensor)
    assert_type(mf.Mollifier(10, mode="noise+blur", blur_sigma_max=1.0)(x, torch.tensor(3)), torch.Tensor)
    assert_type(mol.gamma(3), float)
    assert_type(mol.state_dict(), Dict[str, Any])

    assert_type(g.manual_seed(7, 0), mf.Generator)
    assert_type(g.initial_seed(), int)
    assert_type(g.offset, int)
    assert_type(g.get_state(), torch.Tensor)
    assert_type(g.set_state(g.get_state()), mf.Generator)
    assert_type(g.state_dict(), Dict[str, Optional[int]])
    assert_type(g.clone(), mf.Generator)
    assert_type(g.device, torch.device)
    assert_type(g.seed(), int)
    assert_type(mf.available_backends(), Dict[str, Tuple[bool, str]])


if __name__ == "__main__":
    check(True)
    check(False)
    print("public API calls ran")

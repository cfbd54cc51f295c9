"""CUDA graph capture is refused, never silently replayed (README, "Errors and limits, in one
place"). The stream is decided on the host per call, so a captured call would repeat its noise
on every replay and leave the generator behind; until the stream lives on the device, mollify
raises during capture, before anything is written or any generator moves.

Without a GPU, capture cannot happen here: the CPU tests make the capture check report True and
check that every entry (the plan path, the general path, the custom op, the Mollifier) refuses
before the generator moves. tests/test_mollify_gpu.py captures for real on a GPU."""
import sys

import pytest
import torch

import mollify_fast as mf
from mollify_fast._call import Call

mm = sys.modules["mollify_fast._op"]


@pytest.fixture
def capturing(monkeypatch):
    monkeypatch.setattr(mm, "_capturing", lambda x: True)


CALLS = {
    "plan path": lambda x, g: mf.mollify(x, 0.3, generator=g),
    "general path": lambda x, g: mf.mollify(x, torch.full((x.shape[0],), 0.3), blur_sigma=1.0, generator=g),
    "out=x": lambda x, g: mf.mollify(x, 0.3, generator=g, out=x),
    "custom op": lambda x, g: torch.ops.mollify_fast.mollify(*Call(x, 0.3, stream=g._state).op_args()),
    "Mollifier": lambda x, g: mf.Mollifier(100, generator=g)(x, 3),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_capture_is_refused_before_anything_moves(capturing, call):
    x = torch.rand(4, 3, 8, 8)
    before = x.clone()
    g = mf.Generator(7)
    state = g.state_dict()
    with pytest.raises(RuntimeError, match="CUDA graph is being captured"):
        CALLS[call](x, g)
    assert g.state_dict() == state
    assert torch.equal(x, before)


def test_no_capture_check_cost_off_the_gpu():
    """On the CPU the check is one attribute read: no CUDA call (which would initialise CUDA)."""
    x = torch.rand(2, 3)
    assert mm._capturing(x) is False

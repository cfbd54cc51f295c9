"""CONTRACT section 5: the schedules return sigma^2."""
import math

import pytest
import torch

from mollify_fast import schedules

U = [0.0, 0.25, 0.5, 0.75, 1.0]


def _sigmoid_from_formula(u, start=0.0, end=3.0, tau=0.7, clip_min=1e-9):
    S = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    g = (S(end / tau) - S((u * (end - start) + start) / tau)) / (S(end / tau) - S(start / tau))
    return min(max(g, clip_min), 1.0)


def test_sigmoid_contract_values():
    # CONTRACT section 5 lists these to 4 decimals.
    want = [1.0, 0.4966, 0.1880, 0.0515, 1e-9]
    got = [schedules.sigmoid(u) for u in U]
    for u, g, w in zip(U, got, want):
        assert abs(g - w) < 1e-4, (u, g, w)
    assert got[-1] == 1e-9  # clipped exactly


@pytest.mark.parametrize("kw", [{}, {"start": -3.0, "end": 3.0, "tau": 1.0}, {"start": 0.0, "end": 5.0, "tau": 0.3}])
def test_sigmoid_matches_formula(kw):
    for u in torch.linspace(0, 1, 11).tolist():
        assert schedules.sigmoid(u, **kw) == pytest.approx(_sigmoid_from_formula(u, **kw), rel=1e-12, abs=1e-15)


def test_linear_and_cosine_values():
    for u in U:
        assert schedules.linear(u) == pytest.approx(max(1 - u, 1e-9), abs=1e-15)
        assert schedules.cosine(u) == pytest.approx(max(math.cos(math.pi * u / 2) ** 2, 1e-9), abs=1e-15)
    assert schedules.cosine(1.0) == 1e-9 and schedules.linear(1.0) == 1e-9


@pytest.mark.parametrize("name", ["sigmoid", "linear", "cosine"])
def test_monotone_bounded_and_tensor_input(name):
    f = schedules.get(name)
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    g = f(u)
    assert torch.is_tensor(g) and g.shape == u.shape
    assert (g[1:] <= g[:-1]).all(), "not monotone non-increasing"
    assert g.max() <= 1 and g.min() >= 1e-9
    assert g[0] == 1.0
    # tensor and float inputs agree
    for i in (0, 250, 500, 999):
        assert float(g[i]) == pytest.approx(f(float(u[i])), rel=1e-12)


def test_clip_min_and_errors():
    assert schedules.linear(1.0, clip_min=0.01) == 0.01
    with pytest.raises(ValueError, match="schedule"):
        schedules.get("exp")
    with pytest.raises(TypeError, match="u"):
        schedules.linear("0.5")
    with pytest.raises(ValueError, match="tau"):
        schedules.sigmoid(0.5, tau=0)

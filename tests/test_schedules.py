"""README, "Schedules": the schedules return sigma^2."""
import math

import numpy as np
import pytest
import torch

from mollify_fast import schedules

U = [0.0, 0.25, 0.5, 0.75, 1.0]


def _sigmoid_from_formula(u, start=0.0, end=3.0, tau=0.7, clip_min=1e-9):
    S = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    g = (S(end / tau) - S((u * (end - start) + start) / tau)) / (S(end / tau) - S(start / tau))
    return min(max(g, clip_min), 1.0)


def test_sigmoid_contract_values():
    # The paper's reference values, to 4 decimals (README, "Schedules").
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


def _closed_form64(name, u, **kw):
    """float64 closed forms, one value at a time with the math module."""
    if name == "sigmoid":
        return _sigmoid_from_formula(u, **kw)
    clip_min = kw.get("clip_min", 1e-9)
    if name == "linear":
        return min(max(1 - u, clip_min), 1.0)
    return min(max(math.cos(math.pi * u / 2) ** 2, clip_min), 1.0)


@pytest.mark.parametrize("name", ["sigmoid", "linear", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_tensors_exact_to_their_rounding(name, dtype):
    # u is taken as the low-precision value it is; the schedule of that value, computed
    # exactly and rounded once to dtype, is within half an ulp: |got - want| <= eps/2 * |want|.
    # (float32 sigmoid computed in float32 was off by 1.4% in variance near u = 1.)
    u = torch.linspace(0, 1, 4001).to(dtype)
    got = schedules.get(name)(u)
    assert got.dtype == dtype and got.shape == u.shape
    half_ulp = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    for ui, gi in zip(u.double().tolist(), got.double().tolist()):
        want = _closed_form64(name, ui)
        # float16's smallest normal is 6e-5: below it the spacing is absolute (2**-24).
        tol = half_ulp * abs(want) + (2.0**-25 if dtype == torch.float16 else 0.0)
        assert abs(gi - want) <= tol * (1 + 1e-9), (name, dtype, ui, gi, want)


def test_sigmoid_float32_near_the_end_of_the_window():
    # The worst place for cancellation: S(end/tau) - S(z) with both near 0.986.
    u = torch.tensor([0.99, 0.999, 0.9999], dtype=torch.float32)
    got = schedules.sigmoid(u).double()
    want = torch.tensor([_sigmoid_from_formula(v) for v in u.double().tolist()], dtype=torch.float64)
    assert ((got - want).abs() <= 2.0**-24 * want).all(), (got, want)


@pytest.mark.parametrize("name", ["sigmoid", "linear", "cosine"])
def test_numpy_inputs(name):
    f = schedules.get(name)
    u64 = np.linspace(0, 1, 11)
    g64 = f(u64)
    assert isinstance(g64, np.ndarray) and g64.dtype == np.float64
    np.testing.assert_allclose(g64, [_closed_form64(name, v) for v in u64], rtol=1e-12)
    g32 = f(u64.astype(np.float32))
    assert isinstance(g32, np.ndarray) and g32.dtype == np.float32
    for scalar in (np.float32(0.25), np.float64(0.25), np.float16(0.25)):
        g = f(scalar)
        assert g == pytest.approx(_closed_form64(name, 0.25), rel=1e-6)
    assert f(0) == 1.0 and f(1) == 1e-9  # Python ints are numbers too

"""The demo's and training benchmark's models are real likelihood models: checked here so
that their numbers mean what they say (log-determinants against autograd Jacobians)."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.models import Glow, MLPVAE, RealNVP2D, RealNVPImage, squeeze  # noqa: E402


def _perturb(model, scale=0.3):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_realnvp2d_density_integrates_to_one():
    torch.manual_seed(0)
    m = RealNVP2D(n_layers=4, hidden=16).double()
    _perturb(m, 0.1)
    n, lim = 400, 8.0
    xs = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = m(grid).exp().sum().item() * (xs[1] - xs[0]).item() ** 2
    assert abs(mass - 1) < 0.01, mass


def test_realnvp2d_decode_inverts_encode():
    torch.manual_seed(1)
    m = RealNVP2D(n_layers=4, hidden=16).double()
    _perturb(m, 0.1)
    x = torch.randn(100, 2, dtype=torch.float64) * 3
    with torch.no_grad():
        z, _ = m.encode(x)
        assert torch.allclose(m.decode(z), x, atol=1e-10)
        assert m.sample(7).shape == (7, 2)


def _flow_logdet_brute(model, x):
    """log p(x) from the change of variables computed with an autograd Jacobian."""
    def z_of(v):
        return _latent(model, v.view_as(x))

    jac = torch.autograd.functional.jacobian(z_of, x.reshape(-1))
    z = z_of(x.reshape(-1))
    return (-0.5 * (z * z + math.log(2 * math.pi))).sum() + torch.linalg.slogdet(jac)[1]


def _latent(model, x):
    """All latent variables of a multi-scale image flow, flattened, in a fixed order."""
    zs = []
    if isinstance(model, RealNVPImage):
        for block in model.scales:
            for i, layer in enumerate(block):
                if i == 3:
                    x = squeeze(x)
                x, _ = layer(x)
            z, x = x.chunk(2, 1)
            zs.append(z.reshape(-1))
        for layer in model.final:
            x, _ = layer(x)
    else:
        for i, block in enumerate(model.blocks):
            x = squeeze(x)
            for layer in block:
                x, _ = layer(x)
            if i < len(model.blocks) - 1:
                z, x = x.chunk(2, 1)
                zs.append(z.reshape(-1))
    zs.append(x.reshape(-1))
    return torch.cat(zs)


@pytest.mark.parametrize("cls", [RealNVPImage, Glow])
def test_image_flow_log_likelihood_matches_jacobian(cls):
    torch.manual_seed(0)
    model = cls(channels=3, hidden=8, scales=2).double()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    model(torch.rand(8, 3, 4, 4, dtype=torch.float64))  # actnorm's data-dependent init
    _perturb(model, 0.05)
    got = model(x)[0]
    want = _flow_logdet_brute(model, x)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-8), (got.item(), want.item())


def test_iwae_bound_is_tighter_than_elbo_on_average():
    torch.manual_seed(0)
    m = MLPVAE(d=16, z=4, hidden=32)
    x = torch.rand(256, 16)
    with torch.no_grad():
        elbo = m.elbo(x).mean()
        iw = m.iwae(x, k=64).mean()
    assert iw >= elbo

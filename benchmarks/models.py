"""Small but real likelihood models for the demo and the training-loop benchmarks.

* :class:`RealNVP2D`: affine coupling flow for 2-D toy data (Dinh et al., 2017).
* :class:`RealNVPImage`: multi-scale RealNVP for images: checkerboard and channel-wise affine
  couplings, squeeze, half the channels factored out per scale.
* :class:`Glow`: actnorm, invertible 1x1 convolution, affine coupling, multi-scale (Kingma &
  Dhariwal, 2018).
* :class:`ConvVAE` / :class:`MLPVAE`: Gaussian encoder, Gaussian decoder; the ELBO with a
  ``beta`` weight on the KL (beta-VAE) and the importance-weighted bound (IWAE, Burda et al.).

Every flow returns ``log p(x)`` per sample in nats; image flows take dequantised data in
[0, 1] (a logit transform is left out on purpose: the mollified inputs leave [0, 1]).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG2PI = math.log(2 * math.pi)


def std_normal_logp(z: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (z * z + LOG2PI)).flatten(1).sum(1)


# ---------------------------------------------------------------- 2-D RealNVP
class _MLP(nn.Module):
    def __init__(self, d_in, d_out, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, d_out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return self.net(x)


class RealNVP2D(nn.Module):
    """Alternating 1-D affine couplings on 2-D points: ``log p(x)``, ``sample(n)``."""

    def __init__(self, n_layers: int = 8, hidden: int = 64):
        super().__init__()
        self.nets = nn.ModuleList(_MLP(1, 2, hidden) for _ in range(n_layers))

    def encode(self, x: torch.Tensor):
        """x -> (z, log|det dz/dx|)."""
        logdet = x.new_zeros(x.shape[0])
        for i, net in enumerate(self.nets):
            a, b = (x[:, :1], x[:, 1:]) if i % 2 == 0 else (x[:, 1:], x[:, :1])
            s, t = net(a).chunk(2, dim=1)
            s = torch.tanh(s) * 2.0
            b = b * torch.exp(s) + t
            logdet = logdet + s.squeeze(1)
            x = torch.cat([a, b], 1) if i % 2 == 0 else torch.cat([b, a], 1)
        return x, logdet

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`encode`."""
        x = z
        for i in reversed(range(len(self.nets))):
            a, b = (x[:, :1], x[:, 1:]) if i % 2 == 0 else (x[:, 1:], x[:, :1])
            s, t = self.nets[i](a).chunk(2, dim=1)
            s = torch.tanh(s) * 2.0
            b = (b - t) * torch.exp(-s)
            x = torch.cat([a, b], 1) if i % 2 == 0 else torch.cat([b, a], 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.encode(x)
        return std_normal_logp(z) + logdet

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        p = next(self.parameters())
        return self.decode(torch.randn(n, 2, device=p.device, dtype=p.dtype))


# ---------------------------------------------------------------- image flows
def squeeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


class _ConvNet(nn.Module):
    def __init__(self, c_in, c_out, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, c_out, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return self.net(x)


class AffineCoupling(nn.Module):
    """y_b = x_b * exp(s(x_a)) + t(x_a) with a checkerboard or channel mask."""

    def __init__(self, channels: int, hidden: int, mask: str, parity: int):
        super().__init__()
        self.mask_kind, self.parity = mask, parity
        c_in = channels if mask == "checkerboard" else channels // 2
        c_out = 2 * (channels if mask == "checkerboard" else channels - channels // 2)
        self.net = _ConvNet(c_in, c_out, hidden)
        self.scale = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        if self.mask_kind == "checkerboard":
            h, w = x.shape[-2:]
            m = ((torch.arange(h, device=x.device)[:, None] + torch.arange(w, device=x.device)[None]) % 2 == self.parity)
            m = m.to(x.dtype)[None, None]
            s, t = self.net(x * m).chunk(2, 1)
            s = self.scale * torch.tanh(s) * (1 - m)
            t = t * (1 - m)
            return x * torch.exp(s) + t, s.flatten(1).sum(1)
        a, b = x.chunk(2, 1) if self.parity == 0 else x.chunk(2, 1)[::-1]
        s, t = self.net(a).chunk(2, 1)
        s = self.scale * torch.tanh(s)
        b = b * torch.exp(s) + t
        y = torch.cat([a, b], 1) if self.parity == 0 else torch.cat([b, a], 1)
        return y, s.flatten(1).sum(1)


class RealNVPImage(nn.Module):
    """Multi-scale RealNVP: per scale 3 checkerboard couplings, squeeze, 3 channel couplings,
    then half the channels factored out; a final block of 4 checkerboard couplings."""

    def __init__(self, channels: int = 3, hidden: int = 32, scales: int = 2):
        super().__init__()
        self.scales = nn.ModuleList()
        c = channels
        for _ in range(scales):
            block = nn.ModuleList([AffineCoupling(c, hidden, "checkerboard", i % 2) for i in range(3)]
                                  + [AffineCoupling(4 * c, hidden, "channel", i % 2) for i in range(3)])
            self.scales.append(block)
            c = 2 * c
        self.final = nn.ModuleList(AffineCoupling(c, hidden, "checkerboard", i % 2) for i in range(4))

    def forward(self, x):
        logp = x.new_zeros(x.shape[0])
        for block in self.scales:
            for i, layer in enumerate(block):
                if i == 3:
                    x = squeeze(x)
                x, ld = layer(x)
                logp = logp + ld
            z, x = x.chunk(2, 1)
            logp = logp + std_normal_logp(z)
        for layer in self.final:
            x, ld = layer(x)
            logp = logp + ld
        return logp + std_normal_logp(x)


class ActNorm(nn.Module):
    """Per-channel affine with data-dependent initialisation (zero mean, unit variance)."""

    def __init__(self, c):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, x):
        if not bool(self.initialised):
            with torch.no_grad():
                self.loc.copy_(-x.mean((0, 2, 3), keepdim=True))
                self.logs.copy_(-torch.log(x.std((0, 2, 3), keepdim=True) + 1e-6))
                self.initialised.fill_(True)
        y = (x + self.loc) * torch.exp(self.logs)
        return y, self.logs.sum() * x.shape[2] * x.shape[3] * x.new_ones(x.shape[0])


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution, LU-parametrised (log|det| is the sum of log|diag U|)."""

    def __init__(self, c):
        super().__init__()
        w = torch.linalg.qr(torch.randn(c, c))[0]
        p, lower, upper = torch.linalg.lu(w)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(torch.diagonal(upper)))
        self.register_buffer("l_mask", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(lower)
        self.log_s = nn.Parameter(torch.log(torch.abs(torch.diagonal(upper))))
        self.upper = nn.Parameter(torch.triu(upper, 1))

    def forward(self, x):
        c = x.shape[1]
        lower = self.lower * self.l_mask + torch.eye(c, device=x.device)
        upper = self.upper * self.l_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        w = self.p @ lower @ upper
        return F.conv2d(x, w.view(c, c, 1, 1)), self.log_s.sum() * x.shape[2] * x.shape[3] * x.new_ones(x.shape[0])


class Glow(nn.Module):
    """Multi-scale Glow: per scale squeeze, K steps of (actnorm, 1x1 conv, affine coupling),
    then half the channels factored out (a fixed N(0, 1) prior for them, for brevity)."""

    def __init__(self, channels: int = 3, hidden: int = 32, scales: int = 2, steps: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList()
        c = channels
        for s in range(scales):
            c = 4 * c
            layers: List[nn.Module] = []
            for _ in range(steps):
                layers += [ActNorm(c), InvConv1x1(c), AffineCoupling(c, hidden, "channel", 0)]
            self.blocks.append(nn.ModuleList(layers))
            if s < scales - 1:
                c = c // 2

    def forward(self, x):
        logp = x.new_zeros(x.shape[0])
        for i, block in enumerate(self.blocks):
            x = squeeze(x)
            for layer in block:
                x, ld = layer(x)
                logp = logp + ld
            if i < len(self.blocks) - 1:
                z, x = x.chunk(2, 1)
                logp = logp + std_normal_logp(z)
        return logp + std_normal_logp(x)


# ---------------------------------------------------------------- VAEs
class _VAEBase(nn.Module):
    """Gaussian q(z|x), N(0, I) prior, Gaussian p(x|z) with a learned per-dim log-scale."""

    def elbo(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        rec = self._log_px(x, z)
        kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(1)
        return rec - beta * kl

    def iwae(self, x: torch.Tensor, k: int = 16) -> torch.Tensor:
        """log (1/k) sum_i p(x, z_i) / q(z_i | x): a tighter bound on log p(x), per sample."""
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(k, *mu.shape, device=x.device)
        z = mu + eps * std  # [k, B, D]
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:])
        log_px = self._log_px(xk, z.reshape(-1, z.shape[-1])).view(k, -1)
        log_pz = (-0.5 * (z * z + LOG2PI)).sum(-1)
        log_qz = (-0.5 * (eps * eps + LOG2PI) - 0.5 * logvar).sum(-1)
        return torch.logsumexp(log_px + log_pz - log_qz, 0) - math.log(k)

    def _log_px(self, x, z):
        mean = self.decode(z)
        ls = self.log_scale
        return (-0.5 * ((x - mean) * torch.exp(-ls)) ** 2 - ls - 0.5 * LOG2PI).flatten(1).sum(1)


class MLPVAE(_VAEBase):
    def __init__(self, d: int = 64, z: int = 8, hidden: int = 256):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * z))
        self.dec = nn.Sequential(nn.Linear(z, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, d))
        self.log_scale = nn.Parameter(torch.full((d,), -1.0))
        self.z = z

    def encode(self, x):
        return self.enc(x).chunk(2, -1)

    def decode(self, z):
        return self.dec(z)


class ConvVAE(_VAEBase):
    """For CIFAR-shaped batches [B, 3, 32, 32]."""

    def __init__(self, z: int = 64, hidden: int = 32):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, hidden, 4, 2, 1), nn.SiLU(), nn.Conv2d(hidden, 2 * hidden, 4, 2, 1),
                                 nn.SiLU(), nn.Conv2d(2 * hidden, 4 * hidden, 4, 2, 1), nn.SiLU(), nn.Flatten(),
                                 nn.Linear(4 * hidden * 16, 2 * z))
        self.dec_in = nn.Linear(z, 4 * hidden * 16)
        self.dec = nn.Sequential(nn.SiLU(), nn.ConvTranspose2d(4 * hidden, 2 * hidden, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(2 * hidden, hidden, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(hidden, 3, 4, 2, 1))
        self.log_scale = nn.Parameter(torch.full((3, 32, 32), -1.0))
        self.hidden = hidden

    def encode(self, x):
        return self.enc(x).chunk(2, -1)

    def decode(self, z):
        return self.dec(self.dec_in(z).view(-1, 4 * self.hidden, 4, 4))


def build_image_model(name: str) -> Tuple[nn.Module, callable]:
    """A model and its loss ``loss(model, x)`` (negative log-likelihood or bound, mean over batch)."""
    if name == "realnvp":
        return RealNVPImage(), lambda m, x: -m(x).mean()
    if name == "glow":
        return Glow(), lambda m, x: -m(x).mean()
    if name == "vae":
        return ConvVAE(), lambda m, x: -m.elbo(x).mean()
    if name == "beta-vae":
        return ConvVAE(), lambda m, x: -m.elbo(x, beta=4.0).mean()
    if name == "iwae":
        return ConvVAE(), lambda m, x: -m.iwae(x, k=4).mean()
    raise ValueError(f"unknown model {name!r}")

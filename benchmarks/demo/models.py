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
LOG_SIGMA_MIN = -6.0  # the floor of the closed-form decoder scale (sigma >= 2.5e-3), as sigma-VAE


class _VAEBase(nn.Module):
    """Gaussian q(z|x), N(0, I) prior, Gaussian p(x|z) with scale ``exp(log_scale)``."""

    decoder_sigma = "learned"

    def elbo_parts(self, x: torch.Tensor):
        """``(E_q log p(x|z), KL(q(z|x) || p(z)))`` per sample, one z sample each."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(1)
        return self._log_px(x, z), kl

    def elbo(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        rec, kl = self.elbo_parts(x)
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
        if self.decoder_sigma == "optimal" and self.training:
            # sigma-VAE (Rybkin et al., 2021): the scale that maximises the batch's likelihood,
            # sqrt(mean squared residual), shared by all pixels; it follows a mollification
            # schedule at once, where a learned scale moves at the optimiser's step size.
            with torch.no_grad():
                ls = (0.5 * torch.log((x - mean).pow(2).mean())).clamp(min=LOG_SIGMA_MIN)
                self.log_scale.copy_(ls)
        return (-0.5 * ((x - mean) * torch.exp(-ls)) ** 2 - ls - 0.5 * LOG2PI).flatten(1).sum(1)


class MLPVAE(_VAEBase):
    """MLP VAE on [N, d] rows. ``decoder_sigma``: "learned" (a per-dimension log-scale
    parameter, trained with the rest), "optimal" (one closed-form scale, refitted on every
    training batch; in eval mode the last fitted one, see :meth:`fit_decoder_sigma`), or a
    number (a fixed scale)."""

    def __init__(self, d: int = 64, z: int = 8, hidden: int = 256, decoder_sigma="learned"):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * z))
        self.dec = nn.Sequential(nn.Linear(z, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, d))
        if decoder_sigma == "learned":
            self.log_scale = nn.Parameter(torch.full((d,), -1.0))
        elif decoder_sigma == "optimal":
            self.register_buffer("log_scale", torch.tensor(0.0))
        elif isinstance(decoder_sigma, (int, float)) and decoder_sigma > 0:
            self.register_buffer("log_scale", torch.tensor(math.log(decoder_sigma)))
        else:
            raise ValueError(f'MLPVAE: decoder_sigma must be "learned", "optimal" or a positive number, '
                             f"got {decoder_sigma!r}")
        self.decoder_sigma = decoder_sigma
        self.z = z

    def encode(self, x):
        return self.enc(x).chunk(2, -1)

    def decode(self, z):
        return self.dec(z)

    @torch.no_grad()
    def fit_decoder_sigma(self, x: torch.Tensor) -> None:
        """For ``decoder_sigma="optimal"``: fit the scale on the rows ``x`` (e.g. the clean
        training set) for evaluation; a no-op for the other decoders."""
        if self.decoder_sigma == "optimal":
            was = self.training
            self.train()
            self.elbo(x)
            self.train(was)


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


# ---------------------------------------------------------------- tabular flows
# The paper's UCI experiments, as its authors' released code builds them (their flows follow
# ikostrikov/pytorch-flows): MAF = 5 x (MADE, batch norm, reverse), RealNVP = 5 x (coupling,
# batch norm), Glow = 5 x (batch norm, LU 1x1, coupling), 512 hidden units, every Linear
# weight orthogonal-initialised and every bias zero.
class BatchNormFlow(nn.Module):
    """Batch normalisation as a flow layer (Dinh et al., 2017; Papamakarios et al., 2017):
    ``y = exp(log_gamma) (x - mean) / sqrt(var) + beta``, ``log|det| = sum(log_gamma - log(var) / 2)``.

    In training mode it uses the batch's mean and (biased) variance + eps, so a row's log p(x)
    depends on its batch; in eval mode the running statistics, a fixed bijection. As the
    authors' code, the running statistics are not updated during the training steps; they are
    re-estimated from one pass over the clean training set after every epoch
    (:meth:`TabularFlow.reestimate_batchnorm`)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(d))
        self.beta = nn.Parameter(torch.zeros(d))
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))
        self.record = False  # True only inside reestimate_batchnorm

    def forward(self, x):
        if self.training:
            mean = x.mean(0)
            var = (x - mean).pow(2).mean(0) + self.eps
            if self.record:
                self.running_mean.copy_(mean.detach())
                self.running_var.copy_(var.detach())
        else:
            mean, var = self.running_mean, self.running_var
        y = torch.exp(self.log_gamma) * (x - mean) / var.sqrt() + self.beta
        return y, (self.log_gamma - 0.5 * torch.log(var)).sum().expand(x.shape[0])


class Reverse(nn.Module):
    """Reverses the order of the dimensions (log|det| = 0), so successive MADEs alternate."""

    def forward(self, x):
        return x.flip(1), x.new_zeros(x.shape[0])


class LUInvertibleLinear(nn.Module):
    """y = x W^T with W = P L U (Glow's invertible 1x1 convolution on a vector);
    log|det W| = sum(log|diag U|)."""

    def __init__(self, d: int):
        super().__init__()
        self.conv = InvConv1x1(d)

    def forward(self, x):
        y, logdet = self.conv(x[:, :, None, None])
        return y[:, :, 0, 0], logdet


class _MaskedLinear(nn.Linear):
    def __init__(self, d_in, d_out, mask: torch.Tensor):
        super().__init__(d_in, d_out)
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder (Germain et al., 2015) as a MAF layer (Papamakarios et al., 2017):
    u_i = (x_i - m_i(x_<i)) * exp(-a_i(x_<i)), log|det du/dx| = -sum_i a_i. Unbounded a_i,
    as the authors' code."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        deg_in = torch.arange(1, d + 1)
        deg_h = torch.arange(hidden) % max(1, d - 1) + 1
        m1 = (deg_h[:, None] >= deg_in[None]).float()
        m2 = (deg_h[:, None] >= deg_h[None]).float()
        m3 = (deg_in[:, None] > deg_h[None]).float().repeat(2, 1)
        self.net = nn.Sequential(_MaskedLinear(d, hidden, m1), nn.ReLU(), _MaskedLinear(hidden, hidden, m2),
                                 nn.ReLU(), _MaskedLinear(hidden, 2 * d, m3))

    def forward(self, x):
        m, a = self.net(x).chunk(2, 1)
        return (x - m) * torch.exp(-a), -a.sum(1)


class Coupling1d(nn.Module):
    """RealNVP affine coupling on vectors with a binary mask b (b_i = (i + parity) % 2):
    y = x * exp(s) + t with s = (1-b) * S(b*x), t = (1-b) * T(b*x); log|det| = sum(s).
    S is an MLP with tanh activations, T one with ReLU, as the authors' code."""

    def __init__(self, d: int, hidden: int, parity: int):
        super().__init__()
        self.register_buffer("mask", ((torch.arange(d) + parity) % 2).to(torch.get_default_dtype()))

        def mlp(act):
            return nn.Sequential(nn.Linear(d, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, d))

        self.scale_net, self.translate_net = mlp(nn.Tanh), mlp(nn.ReLU)

    def forward(self, x):
        b = self.mask
        s = self.scale_net(x * b) * (1 - b)
        t = self.translate_net(x * b) * (1 - b)
        return x * torch.exp(s) + t, s.sum(1)


class TabularFlow(nn.Module):
    """A flow on [N, D] rows: ``kind`` "maf", "realnvp" or "glow" (the paper's three UCI
    flows), ``blocks`` blocks of ``hidden`` units; ``forward`` gives log p(x) per row in nats
    (N(0, I) base). In training mode its batch norms use batch statistics; call
    :meth:`reestimate_batchnorm` on the clean training set before evaluating in eval mode."""

    KINDS = ("maf", "realnvp", "glow")

    def __init__(self, d: int, kind: str = "maf", blocks: int = 5, hidden: int = 512):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"TabularFlow: kind must be one of {self.KINDS}, got {kind!r}")
        layers: List[nn.Module] = []
        for i in range(blocks):
            if kind == "maf":
                layers += [MADE(d, hidden), BatchNormFlow(d), Reverse()]
            elif kind == "realnvp":
                layers += [Coupling1d(d, hidden, i % 2), BatchNormFlow(d)]
            else:
                layers += [BatchNormFlow(d), LUInvertibleLinear(d), Coupling1d(d, hidden, i % 2)]
        self.layers = nn.ModuleList(layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor):
        """x [N, D] -> (z [N, D], log|det dz/dx| [N])."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.encode(x)
        return std_normal_logp(z) + logdet

    @torch.no_grad()
    def reestimate_batchnorm(self, train: torch.Tensor) -> torch.Tensor:
        """Set every batch norm's running mean and variance to those of its input over the
        whole ``train`` set in one pass (the authors' per-epoch step), leaving the module in
        the train/eval mode it was in. Returns that pass's log p(x) per training row, which
        equals the eval-mode log p(x) with the new statistics (the batch is the whole set)."""
        was = self.training
        bns = [m for m in self.modules() if isinstance(m, BatchNormFlow)]
        self.train()
        for m in bns:
            m.record = True
        try:
            return self(train)
        finally:
            for m in bns:
                m.record = False
            self.train(was)

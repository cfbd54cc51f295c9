"""The demo's optional 2-D problems (``python -m benchmarks.demo --toy2d``): RealNVP on

1. a mixture of 8 well-separated Gaussians (low-density regions between the modes are where
   flows struggle);
2. points on the unit circle with von Mises distributed angle (data on a 1-D manifold).

Vanilla vs noise mollification, same budget; test log-likelihood and sample statistics.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict

import torch

import mollify_fast as mf
from benchmarks.demo.models import RealNVP2D

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(it, **kw):
        return it


def gmm8(n: int, g: torch.Generator) -> torch.Tensor:
    """8 Gaussians (std 0.2) evenly on a circle of radius 4."""
    k = torch.randint(0, 8, (n,), generator=g)
    ang = k.float() * (2 * math.pi / 8)
    centers = 4 * torch.stack([ang.cos(), ang.sin()], 1)
    return centers + 0.2 * torch.randn(n, 2, generator=g)


def von_mises_circle(n: int, g: torch.Generator, loc: float = 0.0, kappa: float = 2.0) -> torch.Tensor:
    """Points on the unit circle, angle ~ von Mises(loc, kappa): a 1-D manifold in 2-D."""
    # Best-Fisher rejection sampler with the given generator (torch's VonMises takes none).
    tau = 1 + math.sqrt(1 + 4 * kappa**2)
    rho = (tau - math.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho**2) / (2 * rho)
    out = torch.empty(0)
    while out.numel() < n:
        u1, u2, u3 = torch.rand(3, 2 * n, generator=g)
        z = torch.cos(math.pi * u1)
        f = (1 + r * z) / (r + z)
        c = kappa * (r - f)
        ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        theta = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1, 1)) + loc
        out = torch.cat([out, theta[ok]])
    theta = out[:n]
    return torch.stack([theta.cos(), theta.sin()], 1)


PROBLEMS_2D: Dict[str, Callable] = {"gmm8": gmm8, "circle": von_mises_circle}



# ------------------------------------------------------------------ training
def train(model, loss_fn, sample_batch, steps, mollifier, device, desc):
    """Adam training (cosine learning rate); returns the time spent inside the mollify step and
    the total time."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t_mol = 0.0
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, leave=False, mininterval=0.5, disable=None):
        x = sample_batch(step)
        if mollifier is not None:
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            x = mollifier(x, step)
            if device == "cuda":
                torch.cuda.synchronize()
            t_mol += time.perf_counter() - t
        loss = loss_fn(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        sched.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return t_mol, time.perf_counter() - t0


def run_2d(problem: str, seed: int, mollified: bool, steps: int, window: float, device: str, backend: str = "auto"):
    g = torch.Generator().manual_seed(1000 + seed)
    sampler = PROBLEMS_2D[problem]
    train_x = sampler(20000, g).to(device)
    test_x = sampler(5000, g).to(device)
    torch.manual_seed(seed)
    model = RealNVP2D().to(device)
    batch = 512
    bg = torch.Generator(device=device).manual_seed(seed)

    def sample_batch(step):
        return train_x[torch.randint(0, train_x.shape[0], (batch,), generator=bg, device=device)]

    mol = mf.Mollifier(max(1, int(window * steps)), generator=mf.Generator(seed), backend=backend) if mollified else None
    t_mol, t_total = train(model, lambda m, x: -m(x).mean(), sample_batch, steps, mol, device,
                           f"{problem} {'mollified' if mollified else 'vanilla'} seed {seed}")
    model.eval()
    with torch.no_grad():
        test_ll = model(test_x).mean().item()
        samples = model.sample(5000)
    res = {"test_ll": test_ll, "t_mol": t_mol, "t_total": t_total, "steps": steps}
    if problem == "gmm8":
        ang = torch.atan2(samples[:, 1], samples[:, 0]) % (2 * math.pi)
        k = torch.round(ang / (2 * math.pi / 8)).long() % 8
        centers = 4 * torch.stack([(k.float() * 2 * math.pi / 8).cos(), (k.float() * 2 * math.pi / 8).sin()], 1)
        near = (samples - centers).norm(dim=1) < 0.6  # within 3 std of a mode
        res["frac_samples_near_a_mode"] = near.float().mean().item()
        counts = torch.bincount(k[near], minlength=8).float()
        res["modes_covered"] = int((counts > 0.25 * counts.sum() / 8).sum().item())
    else:
        res["frac_samples_within_0.1_of_circle"] = ((samples.norm(dim=1) - 1).abs() < 0.1).float().mean().item()
    return res, model.cpu(), samples.cpu()


def plot_2d(problem, models, samples, data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = 5.5 if problem == "gmm8" else 1.8
    n = 200
    xs = torch.linspace(-lim, lim, n)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), constrained_layout=True)
    axes[0, 0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=n, range=[[-lim, lim]] * 2, cmap="viridis")
    axes[0, 0].set_title("training data")
    axes[1, 0].axis("off")
    for j, name in enumerate(["vanilla", "mollified"]):
        with torch.no_grad():
            logp = models[name](grid).reshape(n, n)
        # log density, floored 8 nats below the peak: a density on a thin ring is invisible linearly
        axes[0, j + 1].imshow(logp.clamp(min=logp.max().item() - 8).numpy(), origin="lower",
                              extent=[-lim, lim, -lim, lim], cmap="viridis")
        axes[0, j + 1].set_title(f"{name}: log density (seed 0)")
        s = samples[name]
        axes[1, j + 1].scatter(s[:, 0], s[:, 1], s=1, alpha=0.4)
        axes[1, j + 1].set_xlim(-lim, lim)
        axes[1, j + 1].set_ylim(-lim, lim)
        axes[1, j + 1].set_aspect("equal")
        axes[1, j + 1].set_title(f"{name}: 5000 samples")
    fig.suptitle(f"RealNVP on {problem}: vanilla vs mollified (same budget)")
    fig.savefig(path, dpi=90)
    plt.close(fig)

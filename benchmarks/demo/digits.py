"""Sample quality on scikit-learn's 8x8 digits for the demo: the paper's FID, scaled down.

FID (Heusel et al., 2017) is the Fréchet distance between Gaussians fitted to Inception-v3
features of generated and real images. Inception needs 299x299 RGB images and a download; an
8x8 digit is neither. So the feature extractor here is a small CNN trained once on the
digits training split (fixed seed, cached next to the results, its test accuracy printed),
and the distance is taken between its 64-d penultimate features of generated images and of
the held-out test images. The numbers are comparable between methods of this demo only, not
with any published FID.
"""
from __future__ import annotations

import os
import time
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import mollify_fast as mf
from benchmarks.demo.models import MLPVAE

N_TRAIN = 1500  # of 1797 digits; the remaining 297 are the test split
CLASSIFIER_FILE = "digits_classifier.pt"


LEVELS = 16  # the digits' grey levels are 0..16: a pixel is level / 16


def as_levels(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (multiples of 1/16) back to their uint8 grey levels 0..16, exactly: the
    demo stores and batches the training images as uint8, as an image pipeline delivers them."""
    lv = torch.round(x * LEVELS)
    if not torch.equal(lv / LEVELS, x):
        raise ValueError("as_levels: x is not a multiple of 1/16 in [0, 1]")
    return lv.to(torch.uint8)


def vae_batch(xb: torch.Tensor, step: int, mol, gen: "mf.Generator") -> torch.Tensor:
    """One training batch ``xb`` (uint8 levels [B, 1, 8, 8]) to the floats the VAE trains on, in
    one fused pass: ``mol(xb, step)`` for a mollified arm (a Mollifier built with
    ``input_scale=1/16``), and for the vanilla arm the input map alone,
    ``mollify(xb, 0.0, alpha=1.0, input_scale=1/16)`` (no noise is added; ``gen`` keeps the op
    off PyTorch's global RNG). Either way ``x_f = xb / 16`` exactly, as the float pipeline."""
    if mol is not None:
        return mol(xb, step)
    return mf.mollify(xb, 0.0, alpha=1.0, input_scale=1.0 / LEVELS, generator=gen)


def digits_split() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x [1500, 64], train_y [1500], test_x [297, 64], test_y [297])``, pixels in
    [0, 1] (the 17 grey levels 0..16 divided by 16), one fixed shuffle (seed 0)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


# ------------------------------------------------------------------ feature extractor
class DigitsClassifier(nn.Module):
    """conv(1->16, 3x3) - ReLU - conv(16->32, 3x3) - ReLU - maxpool 2 - linear(512->64) - ReLU
    (the features) - linear(64->10). Takes [N, 64] rows or [N, 1, 8, 8] images in [0, 1]."""

    FEATURES = 64

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                  nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, self.FEATURES),
                                  nn.ReLU())
        self.head = nn.Linear(self.FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 64] or [N, 1, 8, 8] -> [N, 64] penultimate activations."""
        return self.conv(x.reshape(-1, 1, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(train_x, train_y, epochs: int = 30, seed: int = 0) -> DigitsClassifier:
    """Adam, batch 64, ``epochs`` passes; light pixel noise (std 0.05) so the features do not
    hinge on exact grey levels that a generator cannot reproduce. ~1400 steps, ~10 s CPU."""
    torch.manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(train_x.shape[0], generator=g)
        for i in range(0, train_x.shape[0], 64):
            idx = perm[i:i + 64]
            x = train_x[idx] + 0.05 * torch.randn(len(idx), 64, generator=g)
            loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def load_or_train_classifier(out_dir: str, train_x, train_y, test_x, test_y) -> Tuple[DigitsClassifier, float]:
    """The cached classifier in ``out_dir`` if there is one, else a freshly trained one (saved
    there); returns it with its test accuracy."""
    path = os.path.join(out_dir, CLASSIFIER_FILE)
    model = None
    if os.path.exists(path):
        try:
            model = DigitsClassifier()
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model.eval()
        except (RuntimeError, KeyError):  # written by another version of this file: retrain
            model = None
    if model is None:
        model = train_classifier(train_x, train_y)
        torch.save(model.state_dict(), path)
    with torch.no_grad():
        acc = (model(test_x).argmax(1) == test_y).float().mean().item()
    return model, acc


# ------------------------------------------------------------------ Fréchet distance
def gaussian_stats(feats: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and covariance [D, D] (unbiased, float64) of features [N, D]."""
    f = feats.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2):
    ``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)``.

    The trace term via symmetric eigendecompositions (cov1^1/2 cov2 cov1^1/2 is symmetric PSD),
    in float64, negative eigenvalues from rounding clipped to 0: no complex sqrtm as in
    pytorch-fid, and it equals tr((cov1 cov2)^1/2), whose eigenvalues are the same."""
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    w, v = torch.linalg.eigh(cov1)
    s1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt).item()


def feature_distance(clf: DigitsClassifier, x_gen: torch.Tensor, x_ref: torch.Tensor) -> float:
    """Fréchet distance between the classifier features of two image sets (rows or images)."""
    with torch.no_grad():
        return frechet_distance(*gaussian_stats(clf.features(x_gen)), *gaussian_stats(clf.features(x_ref)))


# ------------------------------------------------------------------ the VAE runs
VAE_MODES = ("vanilla", "noise", "blur")
BLUR_SIGMA_MAX = 1.5  # pixels at step 0: an 8x8 digit blurred at 1.5 px is a soft blob
# The two decoders: "optimal" is the closed-form (sigma-VAE) scale, which follows the
# mollification schedule at once; 0.1 a fixed scale. A per-pixel log-scale learned by Adam at
# lr 1e-3 moves about one unit per 1000 steps, so it would still be catching up with the
# schedule when the clean tail ends, and the comparison would measure that step size.
DECODERS = ("optimal", 0.1)


def decoder_name(decoder) -> str:
    return "optimal σ" if decoder == "optimal" else f"fixed σ={decoder}"


def run_vae(seed: int, mode: str, decoder, steps: int, window: float, device: str, train_x, test_x, clf,
            n_samples: int = 1500, checkpoints: int = 10, backend: str = "auto"):
    """Train :class:`MLPVAE` with the given decoder scale (``"optimal"`` or a fixed number)
    for ``steps`` Adam steps (batch 128, constant lr 1e-3 as the paper's image script),
    mollified over the first ``window * steps`` steps by ``mode``.

    Returns ``(result, samples [64, 64])``: the final test ELBO, its KL term, the IWAE(k=256)
    bound, the Fréchet distance of ``n_samples`` prior samples (decoder means clamped to
    [0, 1]) to the test images, the decoder scale, timings, and ``"trajectory"``: the same
    measures (IWAE left out, 1000 samples) at ``checkpoints`` evenly spaced steps. Test figures
    are taken in eval mode; the optimal scale is refitted on the clean training set first."""
    if mode not in VAE_MODES:
        raise ValueError(f"run_vae: mode must be one of {VAE_MODES}, got {mode!r}")
    torch.manual_seed(seed)
    model = MLPVAE(decoder_sigma=decoder).to(device)
    tx, te = train_x.to(device), test_x.to(device)
    tx_u8 = as_levels(train_x).view(-1, 1, 8, 8).to(device)  # the batches come from here, as uint8
    bg = torch.Generator(device=device).manual_seed(seed)
    n_mol = max(1, int(window * steps))
    mol = None
    if mode == "noise":
        mol = mf.Mollifier(n_mol, generator=mf.Generator(seed), backend=backend, input_scale=1.0 / LEVELS)
    elif mode == "blur":
        mol = mf.Mollifier(n_mol, mode="blur", blur_sigma_max=BLUR_SIGMA_MAX, generator=mf.Generator(seed),
                           backend=backend, input_scale=1.0 / LEVELS)
    map_gen = mf.Generator(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    eval_rng = torch.Generator(device=device)

    @torch.no_grad()
    def measure(n, iwae=False):
        train_sigma = model.log_scale.exp().mean().item()
        model.fit_decoder_sigma(tx)
        model.eval()
        torch.manual_seed(12345)
        rec, kl = model.elbo_parts(te)
        out = {"test_elbo": (rec - kl).mean().item(), "test_kl": kl.mean().item(), "train_sigma": train_sigma,
               "eval_sigma": model.log_scale.exp().mean().item()}
        if iwae:
            out["test_iwae_k256"] = model.iwae(te, k=256).mean().item()
        eval_rng.manual_seed(777)
        smp = model.decode(torch.randn(n, model.z, device=device, generator=eval_rng)).clamp(0, 1).cpu()
        out["fd"] = feature_distance(clf, smp, test_x)
        model.train()
        return out, smp

    marks = {max(1, round(steps * (i + 1) / checkpoints)) for i in range(checkpoints)} if checkpoints else set()
    traj = []
    t0, c0 = time.perf_counter(), time.process_time()
    t_meas = 0.0
    for step in range(steps):
        # uint8 [N, 1, 8, 8] (the blur acts on the last two dims and refuses a 2-D batch), mapped
        # to floats by the same fused call that mollifies it.
        x = vae_batch(tx_u8[torch.randint(0, tx.shape[0], (128,), generator=bg, device=device)], step, mol, map_gen)
        loss = -model.elbo(x.flatten(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        if step + 1 in marks and step + 1 < steps:
            m0 = time.process_time()
            traj.append({"step": step + 1, **measure(1000)[0]})
            t_meas += time.process_time() - m0
    t_wall, t_cpu = time.perf_counter() - t0, time.process_time() - c0 - t_meas
    final, samples = measure(n_samples, iwae=True)
    traj.append({"step": steps, **{k: v for k, v in final.items() if k != "test_iwae_k256"}})
    return ({**final, "t_wall": t_wall, "t_cpu_train": t_cpu, "trajectory": traj}, samples[:64])


def save_grid(samples: torch.Tensor, path: str, title: str) -> None:
    """64 images [64, 64] in an 8x8 grid (one blank pixel around each) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = F.pad(samples[:64].reshape(-1, 8, 8), (1, 1, 1, 1))
    grid = tiles.view(8, 8, 10, 10).permute(0, 2, 1, 3).reshape(80, 80)
    fig, ax = plt.subplots(figsize=(4, 4.3), constrained_layout=True)
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reference_distances(clf, train_x, test_x, n: int = 1500) -> Dict[str, float]:
    """Floors and ceilings for reading the table: the distance of ``n`` real training images
    to the test images (what a perfect generator would score, up to sample noise), and of
    the training images blurred at BLUR_SIGMA_MAX and of uniform noise images."""
    g = torch.Generator().manual_seed(0)
    blurred = mf.mollify(train_x[:n].view(-1, 1, 8, 8), 0.0, alpha=1.0, blur_sigma=BLUR_SIGMA_MAX, backend="torch")
    return {"real_train_images": feature_distance(clf, train_x[:n], test_x),
            "train_images_blurred": feature_distance(clf, blurred.flatten(1), test_x),
            "uniform_noise": feature_distance(clf, torch.rand(n, 64, generator=g), test_x)}

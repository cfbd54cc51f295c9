"""Tabular density estimation for the demo: the paper's UCI table, on the paper's data.

The paper (arXiv 2305.18900, section 5, UCI table) trains MAF, RealNVP and Glow on red-wine,
white-wine and parkinsons and reports the mean test log-likelihood of the final (epoch-150)
model, vanilla vs Gaussian mollification. The three tables ship in ``benchmarks/demo/data/uci/``
exactly as the authors' released code reads them (see the README there for sources and
license), and this module follows that code's settings:

* split without shuffling: the last ``int(0.1 N)`` rows are the test set; of the rest, the last
  ``int(0.1 N')`` are the validation set; training uses the remaining first rows;
* every column standardised by the mean and population standard deviation of the training +
  validation rows;
* 5 flow blocks of 512 hidden units (:class:`benchmarks.demo.models.TabularFlow`), Adam lr 1e-4,
  weight decay 1e-6, batch 100 (reshuffled every epoch, the last batch partial), 150 epochs,
  a constant learning rate;
* after every epoch each batch norm's statistics are re-estimated on the clean training set,
  and the model is evaluated in eval mode;
* mollified arm: every training batch of epoch ``e`` is ``sqrt(1 - g) x + sqrt(g) eps`` with
  ``g`` the paper's sigmoid schedule at ``u = e / 150`` (``mollify_fast.Mollifier(150)``
  called with the epoch): mollified for all 150 epochs, as the authors' UCI runs.

The authors' code reports the epoch-150 figure; we record the validation and test
log-likelihood after every epoch as well, so the table can also give the test figure at the
epoch that is best on validation (early stopping).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

import mollify_fast as mf
from benchmarks.demo.models import TabularFlow

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "uci")
DATASETS = ("redwine", "whitewine", "parkinsons")

# The paper's table (Table 3 of arXiv 2305.18900) and the authors' released code run on a
# 2-core CPU (3 seeds, epoch 150; from benchmarks/demo/data/uci/README.md), test log-likelihood
# in nats: (vanilla, mollified).
PAPER = {"redwine": {"maf": (-16.32, -11.51), "realnvp": (-27.83, -12.51), "glow": (-18.21, -12.37)}}
AUTHORS_CODE = {"redwine": {"maf": ((-16.24, 1.94), (-11.64, 0.31)),
                            "realnvp": ((-29.95, 3.80), (-13.07, 0.55)),
                            "glow": ((-18.36, 2.03), (-12.91, 1.25))}}


def load_table(name: str) -> torch.Tensor:
    """The raw table [N, D] (float64) as the authors' code reads it."""
    if name not in DATASETS:
        raise ValueError(f"load_table: name must be one of {DATASETS}, got {name!r}")
    return torch.from_numpy(np.load(os.path.join(DATA_DIR, f"{name}.npy")))


def split_standardise(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """The authors' split and standardisation, no shuffling:
    ``n_test = int(0.1 N)`` last rows are test; of the other ``N' = N - n_test`` rows the last
    ``int(0.1 N')`` are validation and the first ones training. Every part is standardised by
    the mean and population standard deviation of training + validation rows.

    Returns ``(train, validation, test, {"mean": [D], "std": [D]})``, the parts in float32."""
    n = x.shape[0]
    n_test = int(0.1 * n)
    rest, test = x[: n - n_test], x[n - n_test:]
    n_val = int(0.1 * rest.shape[0])
    train, val = rest[: rest.shape[0] - n_val], rest[rest.shape[0] - n_val:]
    mean, std = rest.mean(0), rest.std(0, unbiased=False)
    f = lambda v: ((v - mean) / std).float()  # noqa: E731
    return f(train), f(val), f(test), {"mean": mean, "std": std}


def run_flow(train: torch.Tensor, val: torch.Tensor, test: torch.Tensor, kind: str, mollified: bool, seed: int,
             epochs: int = 150, device: str = "cpu", batch: int = 100, lr: float = 1e-4, hidden: int = 512,
             backend: str = "auto", keep_model: bool = False,
             on_epoch: Optional[Callable[[int, float, float], None]] = None) -> dict:
    """Train a :class:`TabularFlow` as the authors' UCI script (module docstring); returns the
    per-epoch validation and test log-likelihood (nats per row, mean over rows, eval mode after
    the batch-norm re-estimation), the epoch-``epochs`` figures, the test figure at the best
    validation epoch, timings, and with ``keep_model`` the trained model under ``"model"``.
    ``on_epoch(epoch, test_ll, cpu_s)``: called after every epoch (progress reports)."""
    torch.manual_seed(seed)
    model = TabularFlow(train.shape[1], kind, hidden=hidden).to(device)
    tx, vx, te = train.to(device), val.to(device), test.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-6)
    mol = mf.Mollifier(epochs, generator=mf.Generator(seed), backend=backend) if mollified else None
    g = torch.Generator(device=device).manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    val_ll, test_ll, train_ll = [], [], []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(tx.shape[0], generator=g, device=device)
        for i in range(0, tx.shape[0], batch):
            x = tx[perm[i:i + batch]]
            if mol is not None:
                x = mol(x, epoch)
            loss = -model(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_ll.append(model.reestimate_batchnorm(tx).mean().item())
        model.eval()
        with torch.no_grad():
            val_ll.append(model(vx).mean().item())
            test_ll.append(model(te).mean().item())
        if on_epoch is not None:
            on_epoch(epoch + 1, test_ll[-1], time.process_time() - c0)
    # The best validation epoch; a non-finite validation figure never wins.
    finite = [v if math.isfinite(v) else -math.inf for v in val_ll]
    best = max(range(epochs), key=finite.__getitem__)
    return {"test_ll": test_ll[-1], "val_ll": val_ll[-1], "train_ll": train_ll[-1],
            "best_val_epoch": best + 1, "test_ll_at_best_val": test_ll[best],
            "best_test_ll": max(t if math.isfinite(t) else -math.inf for t in test_ll),
            "test_ll_per_epoch": test_ll, "val_ll_per_epoch": val_ll,
            "t_wall": time.perf_counter() - t0, "t_cpu": time.process_time() - c0,
            **({"model": model} if keep_model else {})}


def run_cached(cache_dir: str, ds: str, kind: str, arm: str, seed: int, epochs: int = 150, hidden: int = 512,
               lr: float = 1e-4, batch: int = 100, device: str = "cpu", backend: str = "auto",
               resume: bool = False, cached_only: bool = False, report_every: int = 0) -> Optional[dict]:
    """:func:`run_flow` on dataset ``ds`` (arm "vanilla" or "mollified"), its result written
    to ``cache_dir/<ds>_<kind>_<arm>_seed<seed>.json``. With ``resume``, a file already there
    from a run with the same settings is returned instead of training again, so a long
    ``--full`` run can be continued after an interruption; with ``cached_only`` such a file or
    ``None``, nothing is trained (a report on the runs finished so far). ``report_every``: print
    a progress line every that many epochs while training (0: none)."""
    path = os.path.join(cache_dir, f"{ds}_{kind}_{arm}_seed{seed}.json")
    settings = {"epochs": epochs, "hidden": hidden, "lr": lr, "batch": batch}
    if (resume or cached_only) and os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
        if all(res.get(k) == v for k, v in settings.items()):
            res["resumed"] = True
            return res
    if cached_only:
        return None
    train, val, test, _ = split_standardise(load_table(ds))
    def report(epoch: int, test: float, cpu: float) -> None:
        if report_every and (epoch % report_every == 0 or epoch == epochs):
            print(f"    {ds} {kind} {arm} seed {seed}: epoch {epoch}/{epochs}, test {test:.2f}, {cpu:.0f} s CPU",
                  flush=True)

    res = run_flow(train, val, test, kind, arm == "mollified", seed, epochs, device, batch, lr, hidden, backend,
                   on_epoch=report)
    res.update(settings, dataset=ds, kind=kind, arm=arm, seed=seed, device=device)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, path)
    res["resumed"] = False
    return res


def gaussian_test_ll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Test log-likelihood (nats per row) of the maximum-likelihood full-covariance Gaussian
    fitted to the training rows: the baseline a flow has to beat."""
    tr = train.double()
    dist = torch.distributions.MultivariateNormal(tr.mean(0), torch.cov(tr.T, correction=0))
    return dist.log_prob(test.double()).mean().item()

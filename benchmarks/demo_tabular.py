"""Tabular density estimation for the demo: the shape of the paper's UCI table.

The paper (arXiv 2305.18900, section 5, UCI table) trains MAF, RealNVP and Glow on red-wine,
white-wine and parkinsons and reports test log-likelihood, vanilla vs Gaussian mollification.
Those files do not ship with our dependencies; these two tables do (``sklearn.datasets.load_*``
reads them from the installed package, no network):

* ``wine``: 178 rows x 13 chemical measurements of Italian wines (UCI "Wine"; a cousin of the
  paper's red-wine table, which has 1599 rows x 11 columns), all continuous.
* ``breast_cancer``: 569 rows x 30 cell-nucleus measurements (UCI "Breast Cancer Wisconsin
  (Diagnostic)"). It is close to a lower-dimensional manifold (radius, perimeter and area
  correlate at 0.998; 13 rows have exact zeros in 6 columns): the regime where the paper says
  mollification helps.

Pipeline, as the authors' ``uci/datasets/redwine.py``: a fixed split with the test rows last,
then standardisation by the mean and standard deviation of the non-test rows only. The
authors hold out 10% for test and 10% of the rest for validation; we use no validation (no
early stopping, the authors do not stop early either) and hold out 20% for test, because
these tables are 3-10x smaller than red-wine and 18 test rows would make the mean a lottery.
"""
from __future__ import annotations

import time
from typing import Dict, Tuple

import torch

import mollify_fast as mf
from benchmarks.models import TabularFlow

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(it, **kw):
        return it

DATASETS = ("wine", "breast_cancer")


def load_table(name: str) -> torch.Tensor:
    """The raw table [N, D] (float64) of a dataset that ships inside scikit-learn."""
    from sklearn import datasets

    if name not in DATASETS:
        raise ValueError(f"load_table: name must be one of {DATASETS}, got {name!r}")
    return torch.tensor(getattr(datasets, f"load_{name}")().data, dtype=torch.float64)


def split_standardise(x: torch.Tensor, test_frac: float = 0.2, seed: int = 0
                      ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Shuffle rows with a fixed seed, hold out the last ``ceil(test_frac * N)`` rows for test,
    and standardise both parts with the training rows' statistics:
    ``(x - mean_train) / std_train`` (population std, as numpy's default in the authors' code).

    Returns ``(train [N - n_test, D], test [n_test, D], {"mean": [D], "std": [D]})`` in float32.
    """
    if not 0 < test_frac < 1:
        raise ValueError(f"split_standardise: test_frac must be in (0, 1), got {test_frac}")
    n = x.shape[0]
    n_test = -(-int(round(test_frac * n * 1e6)) // 1_000_000)  # ceil without float fuzz
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x = x[perm]
    train, test = x[: n - n_test], x[n - n_test:]
    mean, std = train.mean(0), train.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays put
    f = lambda v: ((v - mean) / std).float()  # noqa: E731
    return f(train), f(test), {"mean": mean, "std": std}


def run_flow(train: torch.Tensor, test: torch.Tensor, kind: str, mollified: bool, seed: int, steps: int,
             window: float, device: str, desc: str, batch: int = 100, lr: float = 1e-3,
             backend: str = "auto") -> dict:
    """Train a :class:`TabularFlow` for ``steps`` Adam steps (minibatches drawn with
    replacement), mollified with the paper's sigmoid schedule over the first
    ``window * steps`` steps when ``mollified``; returns the final model's test log-likelihood
    (nats per row, mean over test rows) and timings."""
    torch.manual_seed(seed)
    model = TabularFlow(train.shape[1], kind).to(device)
    tx, te = train.to(device), test.to(device)
    # Adam with the authors' weight decay (1e-6) and a constant learning rate, as their script.
    # 1e-3 rather than their 1e-4: 128 hidden units and ~1500 steps instead of 512 and ~2000.
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-6)
    mol = mf.Mollifier(max(1, int(window * steps)), generator=mf.Generator(seed), backend=backend) if mollified else None
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        model(tx)  # actnorm's data-dependent initialisation on the clean training rows
    t0, c0 = time.perf_counter(), time.process_time()
    skipped = 0
    for step in tqdm(range(steps), desc=desc, leave=False, mininterval=0.5, disable=None):
        x = tx[torch.randint(0, tx.shape[0], (batch,), generator=g, device=device)]
        if mol is not None:
            x = mol(x, step)
        loss = -model(x).mean()
        if not torch.isfinite(loss):  # as the authors' image script: skip a non-finite step
            skipped += 1
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        ll = model(te)
        train_ll = model(tx).mean().item()
    return {"test_ll": ll.mean().item(), "test_ll_median": ll.median().item(), "train_ll": train_ll, "skipped_steps": skipped,
            "t_wall": time.perf_counter() - t0, "t_cpu": time.process_time() - c0}


def gaussian_test_ll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Test log-likelihood (nats per row) of the maximum-likelihood full-covariance Gaussian
    fitted to the training rows: the baseline a flow has to beat."""
    tr = train.double()
    dist = torch.distributions.MultivariateNormal(tr.mean(0), torch.cov(tr.T, correction=0))
    return dist.log_prob(test.double()).mean().item()

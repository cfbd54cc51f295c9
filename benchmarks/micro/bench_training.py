"""Training-loop overhead of mollification for RealNVP, Glow and a VAE on CIFAR-shaped batches.

    python -m benchmarks.micro.bench_training [--device cpu|cuda] [--batch 64] [--rounds 30] [--quick] [--out DIR]

For each model, one optimisation step (forward, backward, Adam) is timed with:
``none`` (no mollification), ``fused noise`` (``mollify_fast.mollify``, backend ``auto``),
``eager noise`` (``alpha * x + sigma * torch.randn_like(x)``), ``fused blur+noise`` and
``eager blur+noise`` (torchvision ``gaussian_blur`` then the composition), blur sigma 1, and for
a uint8 batch as a DataLoader delivers it (the same images, ``round(x * 255)``): ``fused uint8``
(``mollify(x_u8, sigma, dequantize=True)``: dequantisation, scaling and noise in one pass) and
``eager uint8`` (``(x_u8.float() + torch.rand_like) / 256``, then the composition). Variants run
round-robin, one step each per round, so drift hits them alike.

Two overhead figures per variant, in percent of the median ``none`` step:
* ``direct``: the mollify call itself, timed inside the step (synchronised on GPU);
* ``paired``: the step time minus the ``none`` step of the same round (noisier, includes
  everything the call does to the rest of the step, such as cache effects).
Median and 20th-80th percentiles are reported and appended to ``training_<device>.csv`` in
``--out`` (default ``build/results``, ignored by git; ``--out benchmarks/results`` to commit) with
device, versions and date. ``--quick`` (a smoke run: one small model, batch 8, 3 rounds) checks
the harness in seconds. Progress: a line per model and round (a bar on a terminal).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mollify_fast as mf  # noqa: E402
from benchmarks.progress import progress  # noqa: E402
from benchmarks.harness import append_csv, device_slug, pct, run_meta, versions  # noqa: E402
from benchmarks.micro.bench_uint8 import eager_chain  # noqa: E402
from benchmarks.demo.models import build_image_model  # noqa: E402

SIGMA = 0.5
ALPHA = math.sqrt(1 - SIGMA**2)
FIELDS = ["run_id", "timestamp", "device", "cpu", "threads", "torch", "triton", "mollify_fast", "model", "batch",
          "variant", "metric", "unit", "p50", "p20", "p80", "n"]


def variants(dev, x_u8):
    import torchvision.transforms.v2.functional as TF

    gen = mf.Generator(7)
    return {
        "none": None,
        "fused noise": lambda x: mf.mollify(x, SIGMA, generator=gen),
        "eager noise": lambda x: ALPHA * x + SIGMA * torch.randn_like(x),
        "fused blur+noise": lambda x: mf.mollify(x, SIGMA, blur_sigma=1.0, generator=gen),
        "eager blur+noise": lambda x: ALPHA * TF.gaussian_blur(x, [7, 7], [1.0, 1.0]) + SIGMA * torch.randn_like(x),
        # The step's float x is ignored: these start from the uint8 batch.
        "fused uint8": lambda x: mf.mollify(x_u8, SIGMA, generator=gen, dequantize=True),
        "eager uint8": lambda x: eager_chain(x_u8, ALPHA, SIGMA),
    }


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=None, help="default 64 on CPU, 256 on GPU")
    ap.add_argument("--rounds", type=int, default=None, help="default 30 on CPU, 100 on GPU")
    ap.add_argument("--models", default="realnvp,glow,vae", help="comma list of realnvp, glow, vae, beta-vae, iwae")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "results"),
                    help="output folder (default build/results, ignored by git; benchmarks/results to commit)")
    ap.add_argument("--quick", action="store_true", help="smoke run: the VAE only, batch 8, 3 rounds")
    args = ap.parse_args(argv)
    dev = args.device
    if args.quick:
        args.models = "vae" if args.models == ap.get_default("models") else args.models
    batch = args.batch or (8 if args.quick else 64 if dev == "cpu" else 256)
    rounds = args.rounds or (3 if args.quick else 30 if dev == "cpu" else 100)
    meta = dict(run_meta(dev), triton=versions()["triton"])
    rows, lines = [], []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, loss_fn = build_image_model(name)
        model = model.to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.rand(batch, 3, 32, 32, device=dev)
        var = variants(dev, (x * 255).round().to(torch.uint8))
        step_t = {k: [] for k in var}
        mol_t = {k: [] for k in var if var[k] is not None}

        def step(fn):
            sync(dev)
            t0 = time.perf_counter()
            xx = x
            if fn is not None:
                xx = fn(x)
                sync(dev)
            t1 = time.perf_counter()
            loss = loss_fn(model, xx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(dev)
            return time.perf_counter() - t0, t1 - t0

        for fn in var.values():  # warm-up, also actnorm's data-dependent init
            step(fn)
            step(fn)
        for _ in progress(range(rounds), f"training steps: {name}", unit="round", label=lambda _: ""):
            for k, fn in var.items():
                total, mol = step(fn)
                step_t[k].append(total)
                if fn is not None:
                    mol_t[k].append(mol)
        base = sorted(step_t["none"])[len(step_t["none"]) // 2]
        row0 = dict(meta, model=name, batch=batch)
        ms = [t * 1e3 for t in step_t["none"]]
        rows.append(dict(row0, variant="none", metric="step_time", unit="ms", p50=pct(ms, .5), p20=pct(ms, .2),
                         p80=pct(ms, .8), n=len(ms)))
        lines.append(f"{name:<9} batch {batch}: step {pct(ms, .5):8.2f} ms (p20 {pct(ms, .2):.2f}, p80 {pct(ms, .8):.2f})")
        for k in mol_t:
            ms = [t * 1e3 for t in step_t[k]]
            direct = [t / base * 100 for t in mol_t[k]]
            paired = [(a - b) / base * 100 for a, b in zip(step_t[k], step_t["none"])]
            rows.append(dict(row0, variant=k, metric="step_time", unit="ms", p50=pct(ms, .5), p20=pct(ms, .2),
                             p80=pct(ms, .8), n=len(ms)))
            rows.append(dict(row0, variant=k, metric="overhead_direct", unit="%", p50=pct(direct, .5),
                             p20=pct(direct, .2), p80=pct(direct, .8), n=len(direct)))
            rows.append(dict(row0, variant=k, metric="overhead_paired", unit="%", p50=pct(paired, .5),
                             p20=pct(paired, .2), p80=pct(paired, .8), n=len(paired)))
            lines.append(f"    {k:<17} overhead direct {pct(direct, .5):6.2f}% [{pct(direct, .2):.2f}, "
                         f"{pct(direct, .8):.2f}]   paired {pct(paired, .5):6.2f}% [{pct(paired, .2):.2f}, "
                         f"{pct(paired, .8):.2f}]")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"training_{device_slug(dev)}.csv")
    append_csv(path, rows, FIELDS)
    print(f"\ntraining-step overhead on {meta['device']}, {meta['threads']} threads, "
          f"percent of the plain step, median [p20, p80]:")
    print("\n".join(lines))
    print(f"\nappended {len(rows)} rows to {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The fused call against the line it replaces, inside a real training loop.

    python -m benchmarks.micro.bench_in_loop [--rounds 200] [--quick] [--out DIR]

A back-to-back microbenchmark keeps the op's Python path, its launch plan and the generator
hot in the caches; a training loop does not: between two mollify calls comes a whole
forward, backward and optimizer step that evicts them. This benchmark times the mollify call
where users meet it. For each batch shape it trains a small normalizing flow from a library
(zuko's MAF, on the flattened batch) with Adam, and before each step mollifies the batch with
one of

* ``eager``: the one-liner it replaces, ``alpha * x + sigma * torch.randn_like(x)``;
* ``mollify``: ``mf.mollify(x, sigma, generator=g)``;
* ``Mollifier``: ``mol(x, step)`` (schedule, step check and the call);

interleaved round-robin (one training step per provider per round, so drift hits them alike).
Only the mollify call is timed (``time.perf_counter`` around it; on a GPU synchronised before
and after). Reported: median and 20th/80th percentiles of the per-call time and the ratio of
each median to the eager one-liner's, appended to ``in_loop_<device>.csv`` in ``--out`` (default
``build/results``; ``--out benchmarks/results`` to commit). The target is a ratio <= 1 at every
size: the fused call never costs more than the line it replaces.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import sys
import time
import uuid

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mollify_fast as mf  # noqa: E402
from benchmarks.harness import append_csv, cpu_model, device_name, device_slug, pct, versions  # noqa: E402
from benchmarks.progress import progress  # noqa: E402

SHAPES = [(64, 1, 8, 8), (64, 3, 32, 32), (256, 16)]
FIELDS = ["run_id", "timestamp", "device", "cpu", "threads", "torch", "mollify_fast", "shape", "provider",
          "metric", "unit", "p50", "p20", "p80", "n", "ratio_vs_eager"]
MOLLIFY_STEPS = 10**9  # the window never ends inside the benchmark: every call draws noise


def providers(sigma: float):
    alpha = math.sqrt(1 - sigma * sigma)
    g = mf.Generator(1)
    mol = mf.Mollifier(MOLLIFY_STEPS, schedule="linear", generator=mf.Generator(2))
    # linear(u) ~ 1 - u: at step 0 sigma = 1; start the Mollifier where its sigma is ~ `sigma`
    start = int((1 - sigma * sigma) * MOLLIFY_STEPS)
    return {
        "eager": lambda x, step: alpha * x + sigma * torch.randn_like(x),
        "mollify": lambda x, step: mf.mollify(x, sigma, generator=g),
        "Mollifier": lambda x, step: mol(x, start + step),
    }


def flow_for(features: int, dev: str):
    import zuko

    torch.manual_seed(0)
    flow = zuko.flows.MAF(features=features, transforms=2, hidden_features=(64, 64)).to(dev)
    return flow, torch.optim.Adam(flow.parameters(), lr=1e-4)


def run_shape(shape, dev: str, rounds: int, sigma: float):
    provs = providers(sigma)
    features = math.prod(shape[1:])
    flows = {k: flow_for(features, dev) for k in provs}  # one model per provider: same work each
    x = torch.rand(shape, device=dev)
    times = {k: [] for k in provs}

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    for r in progress(range(rounds + 3), f"in-loop {'x'.join(map(str, shape))}", unit="round", label=lambda _: ""):
        for name, fn in provs.items():
            flow, opt = flows[name]
            sync()
            t0 = time.perf_counter()
            xx = fn(x, r)
            sync()
            dt = time.perf_counter() - t0
            if r >= 3:  # warm-up rounds: first-call plan building, allocator
                times[name].append(dt)
            loss = -flow().log_prob(xx.reshape(shape[0], -1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 rounds")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "results"),
                    help="output folder (default build/results, ignored by git; benchmarks/results to commit)")
    args = ap.parse_args(argv)
    dev = args.device
    rounds = 5 if args.quick else args.rounds
    ver = versions()
    meta = {"run_id": uuid.uuid4().hex[:8],
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(dev), "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "torch": ver["torch"], "mollify_fast": ver["mollify_fast"]}
    rows, lines, worst = [], [], 0.0
    for shape in SHAPES:
        times = run_shape(shape, dev, rounds, args.sigma)
        us = {k: [t * 1e6 for t in v] for k, v in times.items()}
        eager = pct(us["eager"], .5)
        s = "x".join(map(str, shape))
        for k, v in us.items():
            ratio = pct(v, .5) / eager
            if k != "eager":
                worst = max(worst, ratio)
            rows.append(dict(meta, shape=s, provider=k, metric="call_time", unit="us", p50=pct(v, .5),
                             p20=pct(v, .2), p80=pct(v, .8), n=len(v), ratio_vs_eager=ratio))
            lines.append(f"{s:<12} {k:<10} {pct(v, .5):9.1f} us  [p20 {pct(v, .2):.1f}, p80 {pct(v, .8):.1f}]"
                         f"  x{ratio:.2f} of eager")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"in_loop_{device_slug(dev)}.csv")
    append_csv(path, rows, FIELDS)
    print(f"\nmollify call inside a training loop (zuko MAF + Adam between calls) on {meta['device']}, "
          f"{meta['threads']} threads, median per call:")
    print("\n".join(lines))
    print(f"\nworst fused/eager ratio: {worst:.2f} (target <= 1); appended {len(rows)} rows to "
          f"{os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

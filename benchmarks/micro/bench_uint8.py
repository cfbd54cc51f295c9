"""uint8 batches in, mollified floats out: the fused input map against the eager chain.

    python -m benchmarks.micro.bench_uint8 [--rounds 60] [--quick] [--out DIR]

An image pipeline hands over a uint8 batch; before the model sees it, a flow's training step
turns it into floats, dequantises and mollifies it. Providers, interleaved round-robin in one
run (one call each per round, so drift hits them alike), on the same uint8 batch:

* ``eager``: the chain it replaces, ``xf = x.float()``, ``xf = xf + torch.rand_like(xf)``,
  ``xf = xf * (1 / 256)``, then the one-liner ``alpha * xf + sigma * torch.randn_like(xf)``;
* ``fused``: ``mf.mollify(x, sigma, generator=g, dequantize=True)`` (the same options: float32
  out, ``input_scale`` 1/256 by default with ``dequantize``), backend ``auto``.

Reported per shape: median and 20th/80th percentiles of the per-call time, the ratio of the
fused median to the eager one, and the bytes each moves per element (read + written, counted
from its passes: fused 1 B read + 4 B written for a float32 out; the eager chain's sum over its
eight passes, :data:`EAGER_PASSES`). Appended to ``uint8_<device>.csv`` in ``--out`` (default
``build/results``; ``--out benchmarks/results`` to commit).
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mollify_fast as mf  # noqa: E402
from benchmarks.harness import append_csv, device_slug, loop_parser, pct, run_meta  # noqa: E402
from benchmarks.progress import progress  # noqa: E402

SHAPES = [(64, 3, 32, 32), (256, 3, 64, 64)]
FIELDS = ["run_id", "timestamp", "device", "cpu", "threads", "torch", "mollify_fast", "backend", "shape",
          "provider", "metric", "unit", "p50", "p20", "p80", "n", "ratio_vs_eager", "bytes_per_element"]
# The eager chain's passes over float32 tensors and the bytes each reads + writes per element.
EAGER_PASSES = {
    "x.float()": 1 + 4,
    "torch.rand_like(xf)": 4,
    "xf + u": 4 + 4 + 4,
    "xf * (1 / 256)": 4 + 4,
    "torch.randn_like(xf)": 4,
    "sigma * eps": 4 + 4,
    "alpha * xf": 4 + 4,
    "alpha * xf + sigma * eps": 4 + 4 + 4,
}
FUSED_BYTES = 1 + 4  # one uint8 read, one float32 write


def eager_chain(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """What the fused input map replaces, pass by pass (:data:`EAGER_PASSES`): a uint8 batch to
    a dequantised, scaled, mollified float32 batch."""
    xf = x.float()
    xf = xf + torch.rand_like(xf)
    xf = xf * (1 / 256)
    return alpha * xf + sigma * torch.randn_like(xf)


def providers(sigma: float):
    alpha = math.sqrt(1 - sigma * sigma)
    g = mf.Generator(1)
    return {
        "eager": (lambda x: eager_chain(x, alpha, sigma), sum(EAGER_PASSES.values())),
        "fused": (lambda x: mf.mollify(x, sigma, generator=g, dequantize=True), FUSED_BYTES),
    }


def run_shape(shape, dev: str, rounds: int, sigma: float):
    provs = providers(sigma)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, device=dev)
    times = {k: [] for k in provs}

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    for r in progress(range(rounds + 3), f"uint8 {'x'.join(map(str, shape))}", unit="round", label=lambda _: ""):
        for name, (fn, _) in provs.items():
            sync()
            t0 = time.perf_counter()
            y = fn(x)
            sync()
            dt = time.perf_counter() - t0
            assert y.dtype == torch.float32 and y.shape == x.shape
            if r >= 3:  # warm-up rounds: plan building, allocator
                times[name].append(dt)
    return times, {k: b for k, (_, b) in provs.items()}


def main(argv=None) -> int:
    ap = loop_parser(__doc__, 60, "smoke run: 3 rounds, the small shape only")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads for the run (0: leave it; 1 is steadier on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = args.device
    rounds = 3 if args.quick else args.rounds
    shapes = SHAPES[:1] if args.quick else SHAPES
    meta = run_meta(dev)
    rows, lines = [], []
    for shape in shapes:
        times, nbytes = run_shape(shape, dev, rounds, args.sigma)
        backend = mf.last_backend()
        us = {k: [t * 1e6 for t in v] for k, v in times.items()}
        eager = pct(us["eager"], .5)
        s = "x".join(map(str, shape))
        for k, v in us.items():
            ratio = pct(v, .5) / eager
            rows.append(dict(meta, backend=backend if k == "fused" else "eager", shape=s, provider=k,
                             metric="call_time", unit="us", p50=pct(v, .5), p20=pct(v, .2), p80=pct(v, .8), n=len(v),
                             ratio_vs_eager=ratio, bytes_per_element=nbytes[k]))
            lines.append(f"{s:<14} {k:<6} {pct(v, .5):10.1f} us  [p20 {pct(v, .2):.1f}, p80 {pct(v, .8):.1f}]"
                         f"  x{ratio:.2f} of eager  {nbytes[k]:3d} B/element moved")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"uint8_{device_slug(dev)}.csv")
    append_csv(path, rows, FIELDS)
    header = (f"uint8 -> dequantised, mollified float32 on {meta['device']}, {meta['threads']} threads, "
              f"median per call (fused backend: {mf.last_backend()}):")
    print("\n".join(["", header] + lines + ["", f"appended {len(rows)} rows to {os.path.relpath(path, ROOT)}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

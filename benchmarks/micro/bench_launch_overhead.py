"""Per-call time of small mollify calls on a GPU, where the host path is the op's cost.

    python -m benchmarks.micro.bench_launch_overhead [--out DIR]

For each backend (triton, cuda) and a CIFAR-sized batch (256x3x32x32, float32), the median
wall time of back-to-back calls (no synchronisation inside the loop: what a training loop
sees), next to ``x.clone()`` and the eager composition. For triton also with its kept-kernel
launch switched off (``_triton_launch._FAST["on"] = False``), and the state of that fast path
after the run (an error there means it fell back to Triton's dispatcher). Writes a CSV.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import torch

import mollify_fast as mf


def per_call_us(fn, n=2000, repeat=5) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    best = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        best.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(best)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "build", "results"))
    args = ap.parse_args(argv)
    from mollify_fast.backends import _triton_launch as MT  # the triton backend's launch path and its state

    rows = []
    x = torch.randn(256, 3, 32, 32, device="cuda")
    g = mf.Generator(1)
    cases = {
        "x.clone()": lambda: x.clone(),
        "eager 0.8*x + 0.6*randn_like(x)": lambda: 0.8 * x + 0.6 * torch.randn_like(x),
    }
    for b in ("triton", "cuda"):
        cases[f"mollify[{b}] noise"] = lambda b=b: mf.mollify(x, 0.6, generator=g, backend=b)
        cases[f"mollify[{b}] blur 1 + noise"] = lambda b=b: mf.mollify(x, 0.6, blur_sigma=1.0, generator=g, backend=b)
    for name, fn in cases.items():
        rows.append((name, per_call_us(fn)))
    MT._FAST["on"] = False
    rows.append(("mollify[triton] noise, dispatcher launch", per_call_us(cases["mollify[triton] noise"])))
    for name, us in rows:
        print(f"{name:<45} {us:8.1f} us/call")
    print("triton fast launch state:", MT._FAST)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "launch_overhead.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device", "torch", "triton", "case", "us_per_call"])
        for name, us in rows:
            w.writerow([torch.cuda.get_device_name(0), torch.__version__, __import__("triton").__version__, name,
                        f"{us:.2f}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

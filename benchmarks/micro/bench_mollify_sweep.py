"""Size sweep of mollify against eager PyTorch, from a few hundred elements to 2**26.

    python -m benchmarks.micro.bench_mollify_sweep [--device cpu|cuda] [--quick] [--out DIR]

Why: the paper's tabular and 2-D experiments put a few hundred to a few tens of thousands of
elements through the op per step, where per-call host overhead, not bandwidth, decides. This
sweep shows the time per element against size for every provider, so "never slower than
eager" is checked at every size, not only at image-batch sizes.

Providers (interleaved round by round, so drift of a shared machine hits all alike):
``eager`` (``alpha * x + sigma * torch.randn_like(x)``, or torchvision's ``gaussian_blur``
then that for blur + noise), ``torch.compile`` of the noise composition (where it compiles),
and every available mollify_fast backend but the reference. Each case runs with 1 and 2
threads (``torch.set_num_threads``) on the CPU. Shape ``(n / 4, 4)`` for noise (a tabular
batch), ``(n / 1024, 32, 32)`` for blur + noise (CIFAR-sized planes).

Timing: ``time.perf_counter`` around one call (CUDA: events after a synchronize), warm-up
first, then rounds until the case's time budget is spent (at least ``min_rounds``). Rows
(p20, p50, p80 in microseconds, and the 20th-percentile speed-up over eager) are appended in
long format to ``<out>/mollify_sweep_<device>.csv``; ``--plot`` draws the latest run.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import os
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mollify_fast as mf  # noqa: E402
from benchmarks.progress import progress  # noqa: E402
from benchmarks.harness import append_csv, device_name, device_slug, pct, round_robin, versions  # noqa: E402

SIGMA = 0.5
ALPHA = math.sqrt(1 - SIGMA**2)
BLUR_SIGMA = 1.0
FIELDS = ["run_id", "timestamp", "device", "torch", "triton", "mollify_fast", "kernel", "dtype", "numel", "shape",
          "threads", "provider", "metric", "unit", "p20", "p50", "p80", "n"]


def shape_for(op: str, n: int) -> tuple:
    if op == "noise":
        return (max(1, n // 4), 4)
    return (max(1, n // 1024), 32, 32)


def providers(x: torch.Tensor, op: str, dev: str) -> Dict[str, Callable]:
    out: Dict[str, Callable] = {}
    blur = BLUR_SIGMA if op != "noise" else None
    g = mf.Generator(1234)
    for name, (ok, _why) in mf.available_backends().items():
        if name == "reference" or not ok:
            continue
        try:
            mf.mollify(x, SIGMA, blur_sigma=blur, generator=mf.Generator(0), backend=name)
        except mf.BackendUnavailableError:
            continue
        out[f"mollify_fast[{name}]"] = (lambda name=name: mf.mollify(x, SIGMA, blur_sigma=blur, generator=g,
                                                                      backend=name))
    if op == "noise":
        out["eager"] = lambda: ALPHA * x + SIGMA * torch.randn_like(x)
        try:
            # A fresh Dynamo cache per case: one lambda's code object recompiled for every shape
            # and thread count would hit the recompile limit (8) and then silently run eagerly.
            torch._dynamo.reset()
            compiled = torch.compile(lambda t: ALPHA * t + SIGMA * torch.randn_like(t), dynamic=False)
            compiled(x)
            out["torch.compile"] = lambda: compiled(x)
        except Exception as e:  # noqa: BLE001 - a missing compiler is a finding, not a crash
            print(f"  torch.compile unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    else:
        import torchvision.transforms.v2.functional as TF

        r = math.ceil(3 * BLUR_SIGMA)
        k = [2 * r + 1] * 2
        out["eager"] = lambda: ALPHA * TF.gaussian_blur(x, k, [BLUR_SIGMA] * 2) + SIGMA * torch.randn_like(x)
    return out


def time_case(provs: Dict[str, Callable], dev: str, budget_s: float, min_rounds: int) -> Dict[str, List[float]]:
    return round_robin(provs, dev, budget_s, min_rounds, max_rounds=2000, warmup=3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="a few sizes, short budget (a smoke run)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per case (default 1.0; quick 0.1)")
    ap.add_argument("--max-log2", type=int, default=26, help="largest size is 2**max_log2 elements")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "results"),
                    help="output folder (default build/results, ignored by git; benchmarks/results to commit)")
    ap.add_argument("--plot", action="store_true", help="also draw the run (PNG next to the CSV)")
    args = ap.parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no GPU visible to torch")

    logs = list(range(8, args.max_log2 + 1, 2 if not args.quick else 6))
    if 11 not in logs and not args.quick:
        logs = sorted(set(logs) | {11})  # 2,048: one of the target sizes
    dtypes = [torch.float32, torch.bfloat16] if not args.quick else [torch.float32]
    ops = ["noise", "blur+noise"]
    threads = [1, 2] if dev == "cpu" else [torch.get_num_threads()]
    budget = args.budget if args.budget is not None else (0.1 if args.quick else 1.0)
    ver = versions()
    run_id = uuid.uuid4().hex[:8]
    meta = {"run_id": run_id, "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(dev), **{k: ver[k] for k in ("torch", "triton", "mollify_fast")}}
    saved_threads = torch.get_num_threads()
    rows: List[dict] = []
    cases = [(op, dt, lg, th) for op in ops for dt in dtypes for lg in logs for th in threads
             if not (op != "noise" and lg < 10)]
    for op, dtype, lg, th in progress(cases, f"size sweep ({dev})",
                                      label=lambda c: f"{c[0]} {c[1]} 2^{c[2]} elements, {c[3]} thread(s)"):
        torch.set_num_threads(th)
        n = 2**lg
        shape = shape_for(op, n)
        x = torch.randn(shape, device=dev).to(dtype)
        # Big cases get fewer rounds: a 2**26 eager call is ~1 s on the 2-core dev VM.
        times = time_case(providers(x, op, dev), dev, budget, 5 if n >= 2**22 else 20)
        eager20 = pct(times["eager"], 0.2)
        for prov, ts in times.items():
            us = [t * 1e6 for t in ts]
            base = dict(meta, kernel=op, dtype=str(dtype).replace("torch.", ""), numel=x.numel(),
                        shape="x".join(map(str, shape)), threads=th, provider=prov, n=len(ts))
            rows.append(dict(base, metric="time", unit="us", p20=pct(us, .2), p50=pct(us, .5), p80=pct(us, .8)))
            rows.append(dict(base, metric="ns_per_element", unit="ns", p20=pct(us, .2) * 1e3 / x.numel(),
                             p50=pct(us, .5) * 1e3 / x.numel(), p80=pct(us, .8) * 1e3 / x.numel()))
            sp = [eager20 / t for t in ts]
            rows.append(dict(base, metric="speedup_vs_eager_p20", unit="x", p20=eager20 / pct(ts, .2),
                             p50=pct(sp, .5), p80=pct(sp, .8)))
    torch.set_num_threads(saved_threads)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"mollify_sweep_{device_slug(dev)}.csv")
    append_csv(path, rows, FIELDS)
    print(summary(rows))
    print(f"\nappended {len(rows)} rows to {os.path.relpath(path, ROOT)} (run {run_id})")
    if args.plot:
        print("plot:", plot(path, run_id))
    return 0


def summary(rows: List[dict]) -> str:
    lines = [f"{'kernel':<11} {'dtype':<9} {'numel':>9} {'thr':>3} {'provider':<24} {'p20 us':>10} {'ns/elem':>8} "
             f"{'vs eager (p20)':>14}"]
    by: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        by.setdefault((r["kernel"], r["dtype"], r["numel"], r["threads"], r["provider"]), {})[r["metric"]] = r
    for k in sorted(by):
        m = by[k]
        lines.append(f"{k[0]:<11} {k[1]:<9} {k[2]:>9} {k[3]:>3} {k[4]:<24} {m['time']['p20']:>10.1f} "
                     f"{m['ns_per_element']['p20']:>8.3f} {m['speedup_vs_eager_p20']['p20']:>14.2f}")
    return "\n".join(lines)


def plot(path: str, run_id: Optional[str] = None) -> str:
    """Time per element against size, one panel per (kernel, dtype, threads); returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        rows = [r for r in csv.DictReader(f)]
    run_id = run_id or rows[-1]["run_id"]
    rows = [r for r in rows if r["run_id"] == run_id and r["metric"] == "ns_per_element"]
    panels = sorted({(r["kernel"], r["dtype"], r["threads"]) for r in rows})
    cols = 2
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(13, 3.6 * nrows), constrained_layout=True, squeeze=False)
    for ax, (kernel, dtype, th) in zip(axes.flat, panels):
        sel = [r for r in rows if (r["kernel"], r["dtype"], r["threads"]) == (kernel, dtype, th)]
        for prov in sorted({r["provider"] for r in sel}):
            pts = sorted((int(r["numel"]), float(r["p20"])) for r in sel if r["provider"] == prov)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=prov,
                    lw=2.2 if prov == "eager" else 1.4, ls="--" if prov == "eager" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{kernel}, {dtype}, {th} thread{'s' if th != '1' else ''}")
        ax.set_xlabel("elements per call")
        ax.set_ylabel("ns per element (20th pct.)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    meta = rows[0]
    fig.suptitle(f"mollify size sweep, run {run_id}: {meta['device']}, torch {meta['torch']}", fontsize=10)
    png = os.path.splitext(path)[0] + ".png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())

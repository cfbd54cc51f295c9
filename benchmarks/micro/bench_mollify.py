"""Microbenchmarks of mollify against every peer, side by side in one run.

    python -m benchmarks.micro.bench_mollify [--device cpu|cuda] [--quick] [--out DIR]

Ops: ``noise`` (``alpha * x + sigma * eps``) and ``blur+noise`` (blur sigma 1 and 2).
Providers: every available mollify_fast backend; the eager composition
``alpha * x + sigma * torch.randn_like(x)``; ``torch.compile`` of it (compile time reported
apart); for blur + noise torchvision's ``gaussian_blur`` then the composition, and
torchvision's ``gaussian_blur`` + ``gaussian_noise``; kornia's ``gaussian_blur2d`` if
installed; ``x.clone()`` as the memory roofline.

Timing: providers run round-robin (one call each per round) so that drift of a shared machine
hits all of them alike; warm-up first; CUDA timings use events after a synchronize. Each
(case, provider) gets the median and the 20th/80th percentiles. Bytes moved are counted as one
read of x and one write of out for every provider, so GB/s compare the same useful traffic.
Rows are appended in long format to ``benchmarks/results/mollify_<device>.csv`` with the device
name, versions, date and run id; the raw per-call times go to a JSON file next to it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mollify_fast as mf  # noqa: E402
from benchmarks.harness import (append_csv, cpu_model, device_name, device_slug, pct, round_robin,  # noqa: E402
                                versions)
from benchmarks.progress import progress  # noqa: E402

SIGMA = 0.6
_COMPILE = True  # --no-compile turns the torch.compile provider off
ALPHA = math.sqrt(1 - SIGMA**2)
FIELDS = ["run_id", "timestamp", "device", "cpu", "threads", "torch", "triton", "torchvision", "mollify_fast",
          "kernel", "provider", "dtype", "shape", "blur_sigma", "metric", "unit", "p50", "p20", "p80", "n"]


def providers(x: torch.Tensor, op: str, blur_sigma: Optional[float], dev: str, compile_times: dict) -> Dict[str, Callable]:
    """name -> zero-argument callable doing one full op."""
    out: Dict[str, Callable] = {}
    g = mf.Generator(1234)
    for name, (ok, _why) in mf.available_backends().items():
        if name == "reference" or not ok:
            continue
        try:
            mf.mollify(x[:1], SIGMA, blur_sigma=blur_sigma, generator=mf.Generator(0), backend=name)
        except mf.BackendUnavailableError:
            continue
        out[f"mollify_fast[{name}]"] = (lambda name=name: mf.mollify(x, SIGMA, blur_sigma=blur_sigma, generator=g,
                                                                      backend=name))
    out["clone (roofline)"] = lambda: x.clone()
    if op == "noise":
        eager = lambda: ALPHA * x + SIGMA * torch.randn_like(x)  # noqa: E731
        out["eager"] = eager
        try:
            if not _COMPILE:
                return out
            torch._dynamo.reset()  # a fresh cache per case: past 8 recompiles Dynamo silently runs eagerly
            compiled = torch.compile(lambda t: ALPHA * t + SIGMA * torch.randn_like(t))
            t0 = time.perf_counter()
            compiled(x)
            if dev == "cuda":
                torch.cuda.synchronize()
            compile_times[(tuple(x.shape), str(x.dtype))] = time.perf_counter() - t0
            out["torch.compile"] = lambda: compiled(x)
        except Exception as e:  # noqa: BLE001
            print(f"  torch.compile unavailable here: {type(e).__name__}: {e}", file=sys.stderr)
        return out
    import torchvision.transforms.v2.functional as TF

    r = math.ceil(3 * blur_sigma)
    k = [2 * r + 1] * 2
    if r < min(x.shape[-2:]):
        out["eager"] = lambda: ALPHA * TF.gaussian_blur(x, k, [blur_sigma] * 2) + SIGMA * torch.randn_like(x)
        if hasattr(TF, "gaussian_noise") and x.dtype == torch.float32:
            out["torchvision blur+gaussian_noise"] = lambda: TF.gaussian_noise(
                TF.gaussian_blur(x, k, [blur_sigma] * 2), 0.0, SIGMA, clip=False)
        try:
            import kornia

            out["kornia blur + noise"] = lambda: ALPHA * kornia.filters.gaussian_blur2d(
                x, tuple(k), (blur_sigma, blur_sigma), border_type="reflect") + SIGMA * torch.randn_like(x)
        except ImportError:
            pass
    return out


def run_case(x, op, blur_sigma, dev, budget_s, min_rounds, compile_times) -> Dict[str, List[float]]:
    return round_robin(providers(x, op, blur_sigma, dev, compile_times), dev, budget_s, min_rounds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="one shape, one dtype, short budget (a smoke run)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per case (default 3 CPU, 1 GPU)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "results"),
                    help="output folder (default build/results, ignored by git; benchmarks/results to commit)")
    ap.add_argument("--tag", default="", help="free text stored with the run (e.g. the machine)")
    ap.add_argument("--shapes", default=None, help="comma-separated shapes to run, e.g. 256x3x256x256,64x3x256x256")
    ap.add_argument("--dtypes", default=None, help="comma-separated dtypes, e.g. float32,bfloat16")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider (its compile time)")
    args = ap.parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no GPU visible to torch")

    shapes = [(256, 3, 32, 32), (128, 3, 64, 64), (64, 3, 256, 256)]
    if dev == "cuda":
        shapes.append((256, 3, 256, 256))  # 201 MB in float32: past every cache
    dtypes = [torch.float32, torch.bfloat16]
    ops = [("noise", None), ("blur+noise", 1.0), ("blur+noise", 2.0)]
    if args.quick:
        shapes, dtypes = shapes[:1], dtypes[:1]
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.dtypes:
        dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    if args.no_compile:
        global _COMPILE
        _COMPILE = False
    budget = args.budget if args.budget is not None else (0.5 if args.quick else (3.0 if dev == "cpu" else 1.0))
    min_rounds = 5 if args.quick else 15

    ver = versions()
    run_id = uuid.uuid4().hex[:8]
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta = {"run_id": run_id, "timestamp": stamp, "device": device_name(dev), "cpu": cpu_model(),
            "threads": torch.get_num_threads(), **{k: ver[k] for k in ("torch", "triton", "torchvision", "mollify_fast")}}
    rows, raw = [], {"meta": dict(meta, tag=args.tag), "cases": []}
    compile_times: dict = {}
    cases = [(s, d, op, b) for s in shapes for d in dtypes for op, b in ops]
    for shape, dtype, op, bs in progress(cases, f"mollify benchmarks ({dev})",
                                         label=lambda c: f"{'x'.join(map(str, c[0]))} {c[1]} {c[2]} {c[3] or ''}"):
        x = torch.randn(shape, device=dev).to(dtype)
        times = run_case(x, op, bs, dev, budget, min_rounds, compile_times)
        nbytes = 2 * x.numel() * x.element_size()
        clone_bw = nbytes / statistics.median(times["clone (roofline)"])
        eager_med = statistics.median(times["eager"]) if "eager" in times else None
        raw["cases"].append({"kernel": op, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
                             "blur_sigma": bs, "seconds": times})
        for prov, ts in times.items():
            base = dict(meta, kernel=op, provider=prov, dtype=str(dtype).replace("torch.", ""),
                        shape="x".join(map(str, shape)), blur_sigma="" if bs is None else bs, n=len(ts))
            ms = [t * 1e3 for t in ts]
            rows.append(dict(base, metric="time", unit="ms", p50=pct(ms, .5), p20=pct(ms, .2), p80=pct(ms, .8)))
            gbps = [nbytes / t / 1e9 for t in ts]
            rows.append(dict(base, metric="bandwidth", unit="GB/s", p50=pct(gbps, .5), p20=pct(gbps, .2),
                             p80=pct(gbps, .8)))
            frac = [nbytes / t / clone_bw for t in ts]
            rows.append(dict(base, metric="fraction_of_clone_bandwidth", unit="1", p50=pct(frac, .5),
                             p20=pct(frac, .2), p80=pct(frac, .8)))
            if eager_med is not None:
                sp = [eager_med / t for t in ts]
                rows.append(dict(base, metric="speedup_vs_eager", unit="x", p50=pct(sp, .5), p20=pct(sp, .2),
                                 p80=pct(sp, .8)))
    for (shape, dtype), sec in compile_times.items():
        rows.append(dict(meta, kernel="noise", provider="torch.compile", dtype=dtype.replace("torch.", ""),
                         shape="x".join(map(str, shape)), blur_sigma="", metric="compile_time", unit="s",
                         p50=sec, p20=sec, p80=sec, n=1))

    os.makedirs(args.out, exist_ok=True)
    slug = device_slug(dev)
    csv_path = os.path.join(args.out, f"mollify_{slug}.csv")
    append_csv(csv_path, rows, FIELDS)
    raw_path = os.path.join(args.out, f"mollify_{slug}_{run_id}_raw.json")
    with open(raw_path, "w") as f:
        json.dump(raw, f)
    print(summary(rows, dev))
    print(f"\nappended {len(rows)} rows to {os.path.relpath(csv_path, ROOT)}; raw times in {os.path.relpath(raw_path, ROOT)}")
    return 0


def summary(rows: List[dict], dev: str) -> str:
    """Median time and speed-up over eager per case, fastest mollify_fast backend first."""
    lines = [f"{'kernel':<17} {'shape':<14} {'dtype':<9} {'provider':<32} {'p50 ms':>9} {'GB/s':>8} "
             f"{'x clone bw':>10} {'vs eager':>9}"]
    key = lambda r: (r["kernel"], str(r["blur_sigma"]), r["shape"], r["dtype"], r["provider"])  # noqa: E731
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r["metric"]] = r
    for k in sorted(by):
        m = by[k]
        if "time" not in m:
            continue
        kernel = k[0] + (f"(s={k[1]})" if k[1] else "")
        lines.append(f"{kernel:<17} {k[2]:<14} {k[3]:<9} {k[4]:<32} {m['time']['p50']:>9.3f} "
                     f"{m['bandwidth']['p50']:>8.2f} {m['fraction_of_clone_bandwidth']['p50']:>10.2f} "
                     f"{m['speedup_vs_eager']['p50'] if 'speedup_vs_eager' in m else float('nan'):>9.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

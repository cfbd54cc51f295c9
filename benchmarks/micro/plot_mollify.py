"""Plot the latest benchmark run in a results CSV: speed-up over eager and fraction of clone
bandwidth per case and provider.

    python -m benchmarks.micro.plot_mollify benchmarks/results/mollify_cpu.csv [--run RUN_ID]
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict


def load(path, run_id=None):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    run_id = run_id or rows[-1]["run_id"]
    rows = [r for r in rows if r["run_id"] == run_id]
    if not rows:
        raise SystemExit(f"{path}: no run {run_id}")
    return rows, run_id


def plot(path, run_id=None, out=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, run_id = load(path, run_id)
    meta = rows[0]
    metrics = [("speedup_vs_eager", "speed-up over eager (x, log)"), ("fraction_of_clone_bandwidth",
                                                                       "fraction of x.clone() bandwidth")]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(16, 11), constrained_layout=True)
    for ax, (metric, label) in zip(axes, metrics):
        data = defaultdict(dict)
        for r in rows:
            if r["metric"] != metric or r["provider"].startswith("clone"):
                continue
            case = f"{r['kernel']}{' s=' + r['blur_sigma'] if r['blur_sigma'] else ''} {r['shape']} {r['dtype']}"
            data[r["provider"]][case] = (float(r["p50"]), float(r["p20"]), float(r["p80"]))
        cases = sorted({c for d in data.values() for c in d})
        provs = sorted(data)
        width = 0.8 / max(1, len(provs))
        for i, prov in enumerate(provs):
            xs, ys, lo, hi = [], [], [], []
            for j, c in enumerate(cases):
                if c in data[prov]:
                    p50, p20, p80 = data[prov][c]
                    xs.append(j + i * width)
                    ys.append(p50)
                    lo.append(max(0.0, p50 - min(p20, p80)))
                    hi.append(max(0.0, max(p20, p80) - p50))
            ax.bar(xs, ys, width, yerr=[lo, hi], label=prov, capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels(cases, fontsize=7, rotation=35, ha="right")
        ax.set_ylabel(label)
        if metric == "speedup_vs_eager":
            ax.set_yscale("log")
            ax.axhline(1.0, color="k", lw=0.8)
        ax.legend(fontsize=7, ncol=3)
    fig.suptitle(f"mollify_fast benchmarks on {meta['device']}, {meta['threads']} threads "
                 f"- torch {meta['torch']}, triton {meta['triton']} - {meta['timestamp']} - run {run_id}\n"
                 "bars: median; whiskers: 20th-80th percentile", fontsize=9)
    out = out or os.path.splitext(path)[0] + ".png"
    fig.savefig(out, dpi=110)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("csv")
    ap.add_argument("--run", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    print(plot(a.csv, a.run, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job (``make demo``): does data mollification help where the paper says it does?

The paper (arXiv 2305.18900) claims two things, and this demo measures both on data that
ships with our dependencies, vanilla vs mollified with the same budget, 3 seeds, mean ± std:

1. **Sample quality** (the paper's FID tables): a VAE on scikit-learn's 8x8 digits, vanilla,
   Gaussian (noise) mollification and blur mollification. The score is a Fréchet distance
   between generated and test images in the feature space of a small digits classifier
   trained once here (``benchmarks/demo_digits.py``), beside the test ELBO.
2. **Density estimation** (the paper's UCI table): MAF, RealNVP and Glow on two real tables
   from scikit-learn (wine, breast cancer), standardised as the authors' UCI pipeline, test
   log-likelihood (``benchmarks/demo_tabular.py``).

Mollification follows the paper's sigmoid schedule over the first 60% of the steps and then
stops, as the authors' image script (30000 mollified + 20000 clean iterations); their UCI
script instead mollifies for all of its epochs. ``--window 1`` does that.

Writes ``summary.md``, ``summary.json``, one sample grid per VAE method and bar plots (PNG).

    python -m benchmarks.demo [--scale 1.0] [--seeds 3] [--out DIR] [--toy2d]

``--scale`` multiplies every training budget (the default takes ~3-4 min of CPU time on 2
cores); ``--toy2d`` adds the two 2-D RealNVP problems of ``benchmarks/demo_toy2d.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mollify_fast as mf  # noqa: E402
from benchmarks import demo_digits, demo_tabular  # noqa: E402
from benchmarks.models import TabularFlow  # noqa: E402


def agg(values: List[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def pm(s: dict, digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


# ------------------------------------------------------------------ 1. digits
def digits_section(args, device, summary, out) -> List[str]:
    train_x, train_y, test_x, test_y = demo_digits.digits_split()
    clf, acc = demo_digits.load_or_train_classifier(args.out, train_x, train_y, test_x, test_y)
    print(f"digits feature classifier: test accuracy {acc:.4f} ({demo_digits.CLASSIFIER_FILE})")
    refs = demo_digits.reference_distances(clf, train_x, test_x)
    steps = max(20, int(2000 * args.scale))
    per: Dict[str, list] = {m: [] for m in demo_digits.VAE_MODES}
    for seed in range(args.seeds):
        for mode in per:
            res, samples = demo_digits.run_vae(seed, mode, steps, args.window, device, train_x, test_x, clf,
                                               backend=args.backend)
            per[mode].append(res)
            if seed == 0:
                demo_digits.save_grid(samples, os.path.join(out, f"vae_samples_{mode}.png"),
                                      f"VAE {mode}, seed 0: 64 prior samples\n"
                                      f"Fréchet distance {res['fd']:.1f}, test ELBO {res['test_elbo']:.1f}")
    demo_digits.save_grid(test_x[:64], os.path.join(out, "digits_test_images.png"), "64 test images")
    stats = {m: {k: agg([r[k] for r in rs]) for k in rs[0]} for m, rs in per.items()}
    summary["digits_vae"] = {"classifier_test_accuracy": acc, "steps": steps, "reference_fd": refs,
                             "blur_sigma_max": demo_digits.BLUR_SIGMA_MAX, "methods": stats}
    plot_digits(stats, refs, os.path.join(out, "vae_digits.png"))
    lines = [f"### Sample quality: VAE on 8x8 digits ({steps} Adam steps, batch 128, {args.seeds} seeds)", "",
             f"Fréchet distance of 1500 prior samples to the 297 test images in the features of a digits "
             f"classifier (test accuracy {acc:.3f}); lower is better. Real training images score "
             f"{refs['real_train_images']:.1f}, uniform noise {refs['uniform_noise']:.0f}.", "",
             "| method | Fréchet distance ↓ | test ELBO ↑ (nats) | test IWAE k=256 ↑ | CPU s/run |",
             "| --- | ---: | ---: | ---: | ---: |"]
    names = {"vanilla": "vanilla", "noise": "Gaussian mollification", "blur": "blur mollification"}
    for m, s in stats.items():
        lines.append(f"| {names[m]} | {pm(s['fd'], 1)} | {pm(s['test_elbo'])} | {pm(s['test_iwae_k256'])} | "
                     f"{s['t_cpu']['mean']:.1f} |")
    return lines


def plot_digits(stats, refs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(stats)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for ax, key, title in zip(axes, ("fd", "test_elbo"), ("Fréchet distance (lower is better)",
                                                            "test ELBO, nats (higher is better)")):
        ax.bar(modes, [stats[m][key]["mean"] for m in modes], yerr=[stats[m][key]["std"] for m in modes],
               capsize=4, color=["#777", "#3a7", "#37a"])
        if key == "fd":
            ax.axhline(refs["real_train_images"], ls="--", c="k", lw=1, label="real training images")
            ax.legend(fontsize=8)
        ax.set_title(f"VAE on digits: {title}", fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ 2. tables
def tabular_section(args, device, summary, out) -> List[str]:
    epochs = max(2, int(round(150 * args.scale)))  # the authors' 150 epochs of batch 100
    res: Dict[str, dict] = {}
    for ds in demo_tabular.DATASETS:
        train, test, _ = demo_tabular.split_standardise(demo_tabular.load_table(ds))
        steps = epochs * math.ceil(train.shape[0] / 100)
        gauss = demo_tabular.gaussian_test_ll(train, test)
        res[ds] = {"rows_train": train.shape[0], "rows_test": test.shape[0], "dims": train.shape[1],
                   "steps": steps, "gaussian_test_ll": gauss, "flows": {}}
        for kind in TabularFlow.KINDS:
            runs = {"vanilla": [], "mollified": []}
            for seed in range(args.seeds):
                for name in runs:
                    runs[name].append(demo_tabular.run_flow(
                        train, test, kind, name == "mollified", seed, steps, args.window, device,
                        f"{ds} {kind} {name} seed {seed}", lr=1e-4, backend=args.backend))
            res[ds]["flows"][kind] = {n: {k: agg([r[k] for r in rs]) for k in rs[0]} for n, rs in runs.items()}
    summary["tabular"] = {"epochs": epochs, "batch": 100, "lr": 1e-4, "datasets": res}
    plot_tabular(res, os.path.join(out, "tabular.png"))
    lines = [f"### Density estimation: flows on tables ({epochs} epochs of batch 100, Adam lr 1e-4, "
             f"{args.seeds} seeds)", "",
             "Test log-likelihood, nats per row, higher is better; the final model after the whole budget. "
             "Δ = mollified − vanilla. A full-covariance Gaussian fitted to the training rows is the baseline. "
             "The mean over test rows is the paper's measure; the median row shows how much of it a few "
             "test rows outside an overfitted model's support decide.",
             "", "| dataset (train/test rows x dims) | flow | vanilla | mollified | Δ | median row: vanilla | "
             "mollified |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for ds, r in res.items():
        label = f"{ds} ({r['rows_train']}/{r['rows_test']} x {r['dims']})"
        lines.append(f"| {label} | Gaussian baseline | {r['gaussian_test_ll']:.2f} | | | | |")
        for kind, s in r["flows"].items():
            d = s["mollified"]["test_ll"]["mean"] - s["vanilla"]["test_ll"]["mean"]
            lines.append(f"| {label} | {kind} | {pm(s['vanilla']['test_ll'])} | {pm(s['mollified']['test_ll'])} "
                         f"| {d:+.2f} | {pm(s['vanilla']['test_ll_median'])} | {pm(s['mollified']['test_ll_median'])} |")
    return lines


def plot_tabular(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res), figsize=(5 * len(res), 3.6), constrained_layout=True)
    for ax, (ds, r) in zip(axes, res.items()):
        kinds = list(r["flows"])
        for j, name in enumerate(("vanilla", "mollified")):
            ax.bar([i + 0.4 * j for i in range(len(kinds))], [r["flows"][k][name]["test_ll"]["mean"] for k in kinds],
                   0.4, yerr=[r["flows"][k][name]["test_ll"]["std"] for k in kinds], capsize=3, label=name)
        ax.axhline(r["gaussian_test_ll"], ls="--", c="k", lw=1, label="Gaussian fit")
        ax.set_xticks([i + 0.2 for i in range(len(kinds))])
        ax.set_xticklabels(kinds)
        # symlog: a flow whose mean is decided by a few far-off test rows (-1000s) would
        # otherwise flatten the others (-10s) to nothing.
        ax.set_yscale("symlog", linthresh=30)
        ax.set_title(f"{ds}: mean test log-likelihood (nats, higher is better; symlog)", fontsize=9)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ 3. optional 2-D problems
def toy2d_section(args, device, summary, out) -> List[str]:
    from benchmarks import demo_toy2d

    steps = max(50, int(1500 * args.scale))
    lines = [f"### RealNVP on 2-D problems ({steps} steps, {args.seeds} seeds)", "",
             "| problem | method | test log-likelihood | sample statistic |", "| --- | --- | ---: | ---: |"]
    summary["toy2d"] = {"steps": steps}
    for problem, sampler in demo_toy2d.PROBLEMS_2D.items():
        per = {"vanilla": [], "mollified": []}
        keep_m, keep_s = {}, {}
        for seed in range(args.seeds):
            for name in per:
                r, m, smp = demo_toy2d.run_2d(problem, seed, name == "mollified", steps, args.window, device,
                                              args.backend)
                per[name].append(r)
                if seed == 0:
                    keep_m[name], keep_s[name] = m, smp
        demo_toy2d.plot_2d(problem, keep_m, keep_s, sampler(20000, torch.Generator().manual_seed(1000)),
                           os.path.join(out, f"realnvp_{problem}.png"))
        stats = {n: {k: agg([r[k] for r in rs]) for k in rs[0] if k != "steps"} for n, rs in per.items()}
        summary["toy2d"][problem] = stats
        key = "frac_samples_near_a_mode" if problem == "gmm8" else "frac_samples_within_0.1_of_circle"
        for n, s in stats.items():
            lines.append(f"| {problem} | {n} | {pm(s['test_ll'], 3)} | {key} {pm(s[key], 3)} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every training budget")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--window", type=float, default=0.6,
                    help="fraction of the steps mollified (0.6: the authors' image script; 1: their UCI script)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--backend", default="auto", help="mollify_fast backend for the mollify calls")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: these models are tiny; on this 2-core VM under load (load "
                         "average 6.5) a tabular RealNVP step took 5 ms of CPU with 1 thread and 187 ms "
                         "with 2, whose threads spin waiting for each other)")
    ap.add_argument("--toy2d", action="store_true", help="also run the 2-D RealNVP problems")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "demo"))
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.scale <= 0 or not 0 < args.window <= 1:
        ap.error("--seeds must be >= 1, --scale > 0 and --window in (0, 1]")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.set_num_threads(args.threads)
    # Denormal floats made a MAF step 50x slower on this CPU (139 ms vs 2.7 ms per step).
    torch.set_flush_denormal(True)
    os.makedirs(args.out, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "torch": torch.__version__, "mollify_fast": mf.__version__,
               "seeds": args.seeds, "scale": args.scale, "window": args.window, "backend": args.backend,
               "load_average_at_start": os.getloadavg()[0]}
    t0, c0 = time.perf_counter(), time.process_time()
    sections = [digits_section, tabular_section] + ([toy2d_section] if args.toy2d else [])
    lines: List[str] = []
    for section in sections:
        lines += section(args, device, summary, args.out) + [""]
    summary["wall_time_s"] = time.perf_counter() - t0
    summary["cpu_time_s"] = time.process_time() - c0
    summary["load_average_at_end"] = os.getloadavg()[0]
    header = (f"# Demo results ({summary['device']}, {summary['threads']} thread(s), torch {summary['torch']}, "
              f"{args.seeds} seeds, scale {args.scale}, mollified for the first {args.window:.0%} of the steps)\n\n"
              f"Wall time {summary['wall_time_s']:.0f} s, CPU time {summary['cpu_time_s']:.0f} s; 1-minute load "
              f"average {summary['load_average_at_start']:.1f} at the start and "
              f"{summary['load_average_at_end']:.1f} at the end (2 cores: above ~1 means other work shared "
              f"the machine and stretched the wall time, not the CPU time).\n")
    report = "\n".join(lines)
    print("\n" + report)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(header + "\n" + report)
    print(f"plots and summary in {args.out}/ (wall {summary['wall_time_s']:.0f} s, CPU {summary['cpu_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

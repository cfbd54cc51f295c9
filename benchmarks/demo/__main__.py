"""The main job (``make demo``): does data mollification help where the paper says it does?

The paper (arXiv 2305.18900) claims two things; this demo measures both, vanilla vs
mollified with the same budget, over several seeds (mean ± std):

1. **Density estimation** (the paper's UCI table): MAF, RealNVP and Glow on the paper's
   red-wine, white-wine and parkinsons tables (shipped in ``benchmarks/demo/data/uci/``) with the
   authors' split and settings, 150 epochs, mollified for all of them
   (``benchmarks/demo/tabular.py``). Reported: the epoch-150 test log-likelihood (the paper's
   measure) and the test figure at the epoch that is best on the validation split (early
   stopping), with a plot of the test log-likelihood per epoch, beside the paper's numbers and
   those of the authors' code.
2. **Sample quality** (the paper's FID tables, scaled down): a VAE on scikit-learn's 8x8
   digits, vanilla, Gaussian (noise) mollification and blur mollification over the first
   ``--window`` of the steps, with a decoder scale that follows the schedule (closed-form
   optimal, as sigma-VAE) and with a fixed one. The score is a Fréchet distance in the
   features of a small digits classifier (``benchmarks/demo/digits.py``), beside the test
   ELBO, its KL term and the decoder scale, logged at checkpoints and plotted.

    python -m benchmarks.demo [--full] [--seeds N] [--datasets ...] [--flows ...]
                              [--vae-steps N] [--scale X] [--resume] [--out DIR] [--toy2d]

The default runs red-wine MAF, both arms, 2 seeds, with the real 150-epoch settings (about
55 s of CPU per run on the 2-core dev VM), and the VAE for 1000 steps, 2 seeds (about 8 s
per run): about 5 minutes of CPU in all. ``--full`` runs the whole table
(3 tables x 3 flows x 2 arms x 3 seeds) and the VAE for 3000 steps, 3 seeds, and prints its
wall time. ``--scale`` multiplies the epochs and VAE steps (a smoke test). Results go to
``build/results/demo`` (ignored by git) unless ``--out`` says otherwise; each flow run is
also written to ``OUT/runs/`` so that ``--resume`` can continue an interrupted run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mollify_fast as mf  # noqa: E402
from benchmarks.demo import digits as demo_digits, tabular as demo_tabular  # noqa: E402
from benchmarks.demo.models import TabularFlow  # noqa: E402


def agg(values: List[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def pm(s: dict, digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


class Progress:
    """One line per finished run with the elapsed wall time, flushed at once (also readable
    when the output is piped into a CI log)."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def __call__(self, msg: str) -> None:
        self.done += 1
        print(f"[{time.perf_counter() - self.t0:6.0f} s, {self.done}/{self.total}] {msg}", flush=True)


# ------------------------------------------------------------------ 1. tables
def tabular_section(args, device, summary, out) -> List[str]:
    epochs = max(2, int(round(150 * args.scale)))  # the authors' 150 epochs of batch 100
    arms = ("vanilla", "mollified")
    progress = Progress(len(args.datasets) * len(args.flows) * len(arms) * args.seeds)
    res: Dict[str, dict] = {}
    for ds in args.datasets:
        train, val, test, _ = demo_tabular.split_standardise(demo_tabular.load_table(ds))
        res[ds] = {"rows_train": train.shape[0], "rows_val": val.shape[0], "rows_test": test.shape[0],
                   "dims": train.shape[1], "gaussian_test_ll": demo_tabular.gaussian_test_ll(train, test),
                   "flows": {}}
        for kind in args.flows:
            runs: Dict[str, list] = {arm: [] for arm in arms}
            for seed in range(args.seeds):
                for arm in arms:
                    r = demo_tabular.run_cached(os.path.join(out, "runs"), ds, kind, arm, seed, epochs,
                                                device=device, backend=args.backend, resume=args.resume,
                                                cached_only=args.cached_only, report_every=max(1, epochs // 6))
                    if r is None:
                        progress(f"{ds} {kind} {arm} seed {seed}: not in {out}/runs, left out (--cached-only)")
                        continue
                    runs[arm].append(r)
                    progress(f"{ds} {kind} {arm} seed {seed}: epoch-{epochs} test {r['test_ll']:.2f}, best "
                             f"validation epoch {r['best_val_epoch']} (test {r['test_ll_at_best_val']:.2f}), "
                             f"{r['t_cpu']:.0f} s CPU{' (resumed from ' + out + '/runs)' if r['resumed'] else ''}")
            if not all(runs.values()):
                continue
            res[ds]["flows"][kind] = {
                arm: {**{k: agg([r[k] for r in rs]) for k in TAB_KEYS},
                      "test_ll_per_epoch": [r["test_ll_per_epoch"] for r in rs], "seeds": [r["seed"] for r in rs],
                      "resumed": sum(r["resumed"] for r in rs)} for arm, rs in runs.items()}
    summary["tabular"] = {"epochs": epochs, "batch": 100, "lr": 1e-4, "weight_decay": 1e-6, "hidden": 512,
                          "blocks": 5, "datasets": res}
    plot_tabular(res, epochs, os.path.join(out, "tabular_test_ll_per_epoch.png"))
    lines = [f"### Density estimation: the paper's UCI table ({epochs} epochs of batch 100, Adam lr 1e-4, "
             f"{args.seeds} seeds)", "",
             "Mean test log-likelihood, nats per row, higher is better, mean ± std over seeds. *Epoch "
             f"{epochs}*: the final model (the paper's measure). *Early-stopped*: the test figure at the epoch "
             "whose validation figure is best. Authors' code: their released code on a 2-core CPU, 3 seeds, "
             "epoch 150. The per-epoch curves are in `tabular_test_ll_per_epoch.png`.", "",
             f"| data | flow | seeds | vanilla, epoch {epochs} | mollified, epoch {epochs} | Δ | vanilla, early-stopped "
             "(epoch) | mollified, early-stopped (epoch) | Δ | authors' code: vanilla → mollified | paper |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for ds, r in res.items():
        label = f"{ds} ({r['rows_train']}/{r['rows_val']}/{r['rows_test']} x {r['dims']})"
        lines.append(f"| {label} | Gaussian fit | | {r['gaussian_test_ll']:.2f} | | | | | | | |")
        for kind, s in r["flows"].items():
            v, m = s["vanilla"], s["mollified"]
            d_end = m["test_ll"]["mean"] - v["test_ll"]["mean"]
            d_best = m["test_ll_at_best_val"]["mean"] - v["test_ll_at_best_val"]["mean"]
            ac = demo_tabular.AUTHORS_CODE.get(ds, {}).get(kind)
            ac = f"{ac[0][0]:.2f} ± {ac[0][1]:.2f} → {ac[1][0]:.2f} ± {ac[1][1]:.2f}" if ac else "—"
            pp = demo_tabular.PAPER.get(ds, {}).get(kind)
            pp = f"{pp[0]:.2f} → {pp[1]:.2f}" if pp else "—"
            lines.append(f"| {label} | {kind} | {len(v['seeds'])} | {pm(v['test_ll'])} | {pm(m['test_ll'])} | {d_end:+.2f} | "
                         f"{pm(v['test_ll_at_best_val'])} ({v['best_val_epoch']['mean']:.0f}) | "
                         f"{pm(m['test_ll_at_best_val'])} ({m['best_val_epoch']['mean']:.0f}) | {d_best:+.2f} | "
                         f"{ac} | {pp} |")
    lines += ["", f"Per seed, epoch {epochs} (vanilla / mollified): " + "; ".join(
        f"{ds} {kind}: " + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(s["vanilla"]["test_ll"]["values"],
                                                                         s["mollified"]["test_ll"]["values"]))
        for ds, r in res.items() for kind, s in r["flows"].items()) + "."]
    return lines


TAB_KEYS = ("test_ll", "test_ll_at_best_val", "best_val_epoch", "best_test_ll", "train_ll", "t_cpu")


def plot_tabular(res, epochs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(res), max(len(r["flows"]) for r in res.values())
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), constrained_layout=True, squeeze=False)
    ep = list(range(1, epochs + 1))
    for i, (ds, r) in enumerate(res.items()):
        for j, (kind, s) in enumerate(r["flows"].items()):
            ax = axes[i][j]
            lo = []
            for arm, color in (("vanilla", "#c44"), ("mollified", "#37a")):
                curves = s[arm]["test_ll_per_epoch"]
                for k, c in enumerate(curves):
                    ax.plot(ep, c, color=color, lw=1, alpha=0.8, label=arm if k == 0 else None)
                lo += [min(c) for c in curves]
            best = max(max(c) for arm in ("vanilla", "mollified") for c in s[arm]["test_ll_per_epoch"])
            # A vanilla run that blows up late (-1000s) would flatten the rest: cut the axis.
            ax.set_ylim(max(min(lo), best - 25), best + 1)
            ax.axhline(r["gaussian_test_ll"], ls="--", c="k", lw=0.8, label="Gaussian fit")
            ax.set_title(f"{ds}, {kind}: test log-likelihood per epoch", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.legend(fontsize=7)
        for j in range(len(r["flows"]), cols):
            axes[i][j].axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------ 2. digits
VAE_KEYS = ("fd", "test_elbo", "test_kl", "test_iwae_k256", "train_sigma", "eval_sigma", "t_cpu_train")


def digits_section(args, device, summary, out) -> List[str]:
    train_x, train_y, test_x, test_y = demo_digits.digits_split()
    # The committed feature classifier when there is one, so every run scores with the same features.
    committed = os.path.join(ROOT, "benchmarks", "results", "demo")
    clf_dir = committed if os.path.exists(os.path.join(committed, demo_digits.CLASSIFIER_FILE)) else out
    clf, acc = demo_digits.load_or_train_classifier(clf_dir, train_x, train_y, test_x, test_y)
    print(f"digits feature classifier: test accuracy {acc:.4f} ({demo_digits.CLASSIFIER_FILE})", flush=True)
    refs = demo_digits.reference_distances(clf, train_x, test_x)
    steps = max(20, int(args.vae_steps * args.scale))
    decoders = demo_digits.DECODERS
    progress = Progress(len(decoders) * len(demo_digits.VAE_MODES) * args.seeds)
    per: Dict[str, Dict[str, list]] = {demo_digits.decoder_name(d): {m: [] for m in demo_digits.VAE_MODES}
                                       for d in decoders}
    for seed in range(args.seeds):
        for dec in decoders:
            dname = demo_digits.decoder_name(dec)
            for mode in demo_digits.VAE_MODES:
                res, samples = demo_digits.run_vae(seed, mode, dec, steps, args.window, device, train_x, test_x,
                                                   clf, backend=args.backend)
                per[dname][mode].append(res)
                progress(f"VAE {dname} {mode} seed {seed}: Fréchet distance {res['fd']:.1f}, test ELBO "
                         f"{res['test_elbo']:.1f}, KL {res['test_kl']:.1f}, decoder σ {res['eval_sigma']:.3f}, "
                         f"{res['t_cpu_train']:.0f} s CPU")
                if seed == 0:
                    slug = "optimal" if dec == "optimal" else "fixed"
                    demo_digits.save_grid(samples, os.path.join(out, f"vae_samples_{slug}_{mode}.png"),
                                          f"VAE {dname}, {mode}, seed 0: 64 prior samples\n"
                                          f"Fréchet distance {res['fd']:.1f}, test ELBO {res['test_elbo']:.1f}")
    demo_digits.save_grid(test_x[:64], os.path.join(out, "digits_test_images.png"), "64 test images")
    stats = {d: {m: {**{k: agg([r[k] for r in rs]) for k in VAE_KEYS},
                     "trajectory": [r["trajectory"] for r in rs]} for m, rs in pm_.items()} for d, pm_ in per.items()}
    n_mol = max(1, int(args.window * steps))
    summary["digits_vae"] = {"classifier_test_accuracy": acc, "steps": steps, "mollified_steps": n_mol,
                             "reference_fd": refs, "blur_sigma_max": demo_digits.BLUR_SIGMA_MAX, "decoders": stats}
    plot_vae_trajectories(stats, refs, n_mol, os.path.join(out, "vae_trajectories.png"))
    lines = [f"### Sample quality: VAE on 8x8 digits ({steps} Adam steps of batch 128, mollified for the first "
             f"{n_mol}, {args.seeds} seeds)", "",
             f"Fréchet distance of 1500 prior samples to the 297 test images in the features of a digits "
             f"classifier (test accuracy {acc:.3f}); lower is better. Real training images score "
             f"{refs['real_train_images']:.1f}, uniform noise {refs['uniform_noise']:.0f}. Decoder σ: the "
             "scale the last training step used (optimal σ: fitted to that batch, so it follows the schedule). "
             "The trajectories are in `vae_trajectories.png`.", "",
             "| decoder | method | Fréchet distance ↓ | test ELBO ↑ (nats) | KL (nats) | test IWAE k=256 ↑ | "
             "decoder σ at the end | CPU s/run |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    names = {"vanilla": "vanilla", "noise": "Gaussian mollification", "blur": "blur mollification"}
    for d, by_mode in stats.items():
        for m, s in by_mode.items():
            lines.append(f"| {d} | {names[m]} | {pm(s['fd'], 1)} | {pm(s['test_elbo'])} | {pm(s['test_kl'])} | "
                         f"{pm(s['test_iwae_k256'])} | {pm(s['train_sigma'], 3)} | {s['t_cpu_train']['mean']:.1f} |")
    return lines


def plot_vae_trajectories(stats, refs, n_mol, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("fd", "Fréchet distance (lower is better)", "log"), ("test_elbo", "test ELBO, nats", "linear"),
            ("test_kl", "test KL, nats", "linear"), ("train_sigma", "decoder σ used in training", "log"))
    colors = {"vanilla": "#777", "noise": "#3a7", "blur": "#37a"}
    fig, axes = plt.subplots(len(stats), len(keys), figsize=(4 * len(keys), 3.2 * len(stats)),
                             constrained_layout=True, squeeze=False)
    for i, (d, by_mode) in enumerate(stats.items()):
        for j, (key, title, scale) in enumerate(keys):
            ax = axes[i][j]
            for m, s in by_mode.items():
                steps = [c["step"] for c in s["trajectory"][0]]
                vals = torch.tensor([[c[key] for c in run] for run in s["trajectory"]])
                ax.plot(steps, vals.mean(0), color=colors[m], label=m, marker=".")
                if vals.shape[0] > 1:
                    ax.fill_between(steps, vals.min(0).values, vals.max(0).values, color=colors[m], alpha=0.2)
            ax.axvline(n_mol, ls=":", c="k", lw=1)
            if key == "fd":
                ax.axhline(refs["real_train_images"], ls="--", c="k", lw=0.8, label="real images")
            if key == "test_elbo":  # early checkpoints (-100s) would flatten the end of the runs
                ends = [run[-1][key] for s in by_mode.values() for run in s["trajectory"]]
                ax.set_ylim(max(ax.get_ylim()[0], min(ends) - 40), ax.get_ylim()[1])
            ax.set_yscale(scale)
            ax.set_title(f"{d}: {title}", fontsize=9)
            ax.set_xlabel("step (dotted: mollification ends)", fontsize=8)
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------ 3. optional 2-D problems
def toy2d_section(args, device, summary, out) -> List[str]:
    from benchmarks.demo import toy2d as demo_toy2d

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
    ap.add_argument("--full", action="store_true",
                    help="the whole table: every dataset and flow, 3 seeds, and the VAE for 3000 steps")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 2; 3 with --full)")
    ap.add_argument("--datasets", nargs="+", choices=demo_tabular.DATASETS, default=None,
                    help="default: redwine (all three with --full)")
    ap.add_argument("--flows", nargs="+", choices=TabularFlow.KINDS, default=None,
                    help="default: maf (all three with --full)")
    ap.add_argument("--vae-steps", type=int, default=None, help="VAE Adam steps (default 1000; 3000 with --full)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the flows' 150 epochs and the VAE steps (below 1: a smoke test only)")
    ap.add_argument("--window", type=float, default=0.6,
                    help="fraction of the VAE steps mollified (0.6: the authors' image script); the flows "
                         "are mollified for all their epochs, as the authors' UCI script")
    ap.add_argument("--no-tabular", action="store_true", help="skip the flows")
    ap.add_argument("--no-vae", action="store_true", help="skip the VAE")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the flow runs already in OUT/runs with the same settings")
    ap.add_argument("--cached-only", action="store_true",
                    help="train no flow: report the runs already in OUT/runs (a cell with a missing seed "
                         "reports the seeds it has)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--backend", default="auto", help="mollify_fast backend for the mollify calls")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: these models are small; on a loaded 2-core VM two threads "
                         "spin waiting for each other)")
    ap.add_argument("--toy2d", action="store_true", help="also run the 2-D RealNVP problems")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "results", "demo"),
                    help="output folder (default build/results/demo, ignored by git; the committed results "
                         "are in benchmarks/results/demo)")
    args = ap.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else (3 if args.full else 2)
    args.datasets = args.datasets or (list(demo_tabular.DATASETS) if args.full else ["redwine"])
    args.flows = args.flows or (list(TabularFlow.KINDS) if args.full else ["maf"])
    args.vae_steps = args.vae_steps if args.vae_steps is not None else (3000 if args.full else 1000)
    if args.seeds < 1 or args.scale <= 0 or not 0 < args.window <= 1 or args.vae_steps < 1:
        ap.error("--seeds and --vae-steps must be >= 1, --scale > 0 and --window in (0, 1]")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.set_num_threads(args.threads)
    # Denormal floats made a MAF step 50x slower on this CPU (139 ms vs 2.7 ms per step).
    torch.set_flush_denormal(True)
    os.makedirs(args.out, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "torch": torch.__version__, "mollify_fast": mf.__version__,
               "argv": sys.argv[1:] if argv is None else list(argv), "seeds": args.seeds, "scale": args.scale,
               "window": args.window, "backend": args.backend, "load_average_at_start": os.getloadavg()[0]}
    t0, c0 = time.perf_counter(), time.process_time()
    sections = (([] if args.no_tabular else [tabular_section]) + ([] if args.no_vae else [digits_section])
                + ([toy2d_section] if args.toy2d else []))
    lines: List[str] = []
    for section in sections:
        lines += section(args, device, summary, args.out) + [""]
    summary["wall_time_s"] = time.perf_counter() - t0
    summary["cpu_time_s"] = time.process_time() - c0
    summary["load_average_at_end"] = os.getloadavg()[0]
    resumed = sum(a["resumed"] for r in summary.get("tabular", {}).get("datasets", {}).values()
                  for f in r["flows"].values() for a in f.values())
    header = (f"# Demo results ({summary['device']}, {summary['threads']} thread(s), torch {summary['torch']}, "
              f"`python -m benchmarks.demo {' '.join(summary['argv'])}`)\n\n"
              f"Wall time {summary['wall_time_s']:.0f} s, CPU time {summary['cpu_time_s']:.0f} s; 1-minute load "
              f"average {summary['load_average_at_start']:.1f} at the start and "
              f"{summary['load_average_at_end']:.1f} at the end (2 cores: above ~1 means other work shared "
              f"the machine and stretched the wall time, not the CPU time).")
    if resumed:
        header += (f" {resumed} flow runs were read back from `runs/` (`--resume` or `--cached-only`): earlier "
                   "invocations with the same settings trained them, and their time is not in these totals (each "
                   "run's CPU time is in its JSON).")
    report = "\n".join(lines)
    print("\n" + report)
    # A run of one part writes its own summary, so the parts of a long run can be made apart.
    name = "summary" + ("_vae" if args.no_tabular and not args.no_vae else "_tabular" if args.no_vae else "")
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(header + "\n\n" + report)
    print(f"plots and summary in {args.out}/ (wall {summary['wall_time_s']:.0f} s, CPU {summary['cpu_time_s']:.0f} s)",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

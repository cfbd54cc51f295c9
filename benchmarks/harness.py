"""The microbenchmarks' shared harness: where the numbers come from and where they go.

* :func:`round_robin` times providers one call each per round (drift of a shared machine hits
  all alike), with :class:`Timer` (CUDA events on a GPU, ``perf_counter`` on the CPU);
* :func:`pct` reads percentiles of the per-call times;
* :func:`device_name`, :func:`device_slug`, :func:`cpu_model` and :func:`versions` label every
  row with the machine and the software it ran on;
* :func:`append_csv` appends rows to a long-format CSV atomically;
* :func:`loop_parser` and :func:`run_meta`: the command line and the shared row columns of the
  interleaved per-call benchmarks (``bench_in_loop``, ``bench_uint8``).

Used by every script in ``benchmarks/micro/`` (and ``benchmarks/demo`` for its labels).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import time
import uuid
from typing import Callable, Dict, List

import torch

import mollify_fast as mf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_name(dev: str) -> str:
    if dev == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"


def device_slug(dev: str) -> str:
    """``cpu`` or the GPU's name as a file-name part (``nvidia_h100_80gb_hbm3``)."""
    return "cpu" if dev == "cpu" else "".join(c if c.isalnum() else "_" for c in device_name(dev)).strip("_").lower()


def append_csv(path: str, rows: List[dict], fields: List[str]) -> None:
    """Append ``rows`` to the long-format CSV at ``path`` (header if new), atomically: copy,
    add, rename, so an interrupted run leaves the old file whole. Lines end in ``\n``; the old
    rows are copied byte for byte (an append changes no earlier line)."""
    new = not os.path.exists(path)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        if not new:
            with open(path, newline="") as old:
                f.write(old.read())
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    os.replace(tmp, path)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def versions() -> Dict[str, str]:
    v = {"torch": torch.__version__, "mollify_fast": mf.__version__}
    for mod in ("triton", "torchvision"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = "absent"
    return v


class Timer:
    def __init__(self, dev: str):
        self.dev = dev

    def __call__(self, fn: Callable[[], object]) -> float:
        """Seconds for one call, synchronised."""
        if self.dev == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def round_robin(provs: Dict[str, Callable], dev: str, budget_s: float, min_rounds: int, max_rounds: int = 200,
                warmup: int = 2) -> Dict[str, List[float]]:
    """Seconds per call for every provider, one call each per round (so drift of a shared
    machine hits all alike), after ``warmup`` calls each (allocator, caches, JIT); rounds until
    ``budget_s`` is spent, at least ``min_rounds`` and at most ``max_rounds``."""
    timer = Timer(dev)
    for fn in provs.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in provs}
    t_end = time.perf_counter() + budget_s
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < t_end and rounds < max_rounds):
        for name, fn in provs.items():
            times[name].append(timer(fn))
        rounds += 1
    return times


def pct(v: List[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def loop_parser(doc: str, rounds: int, quick_help: str) -> argparse.ArgumentParser:
    """The command line of the interleaved per-call benchmarks (bench_in_loop, bench_uint8)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "results"),
                    help="output folder (default build/results, ignored by git; benchmarks/results to commit)")
    return ap


def run_meta(dev: str) -> dict:
    """The columns every row of one run shares: run id, time, machine, versions."""
    ver = versions()
    return {"run_id": uuid.uuid4().hex[:8],
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(dev), "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "torch": ver["torch"], "mollify_fast": ver["mollify_fast"]}

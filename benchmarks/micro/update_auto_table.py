"""Rewrite ``mollify_fast/backends/auto_table.json`` for one device type from measured results.

    python -m benchmarks.micro.update_auto_table benchmarks/results/mollify_cpu.csv [--run RUN_ID]

For each op (noise; blur, from the blur+noise cases) the mollify_fast backends of the chosen
run are ranked by the geometric mean of their median times over the cases they all ran; the
table records the ranking, fastest first, and which file and run it came from. Backends that
were not measured keep their old relative order after the measured ones.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = os.path.join(ROOT, "mollify_fast", "backends", "auto_table.json")


def rank(path, run_id=None):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    run_id = run_id or rows[-1]["run_id"]
    rows = [r for r in rows if r["run_id"] == run_id and r["metric"] == "time"
            and r["provider"].startswith("mollify_fast[")]
    times = defaultdict(lambda: defaultdict(dict))  # op -> case -> backend -> ms
    for r in rows:
        op = "noise" if r["kernel"] == "noise" else "blur"
        case = (r["shape"], r["dtype"], r["blur_sigma"])
        times[op][case][r["provider"][len("mollify_fast["):-1]] = float(r["p50"])
    ranking = {}
    for op, cases in times.items():
        backends = set.intersection(*(set(v) for v in cases.values()))
        score = {b: sum(math.log(cases[c][b]) for c in cases) / len(cases) for b in backends}
        ranking[op] = sorted(score, key=score.get)
    return ranking, run_id, rows[0]["device"] if rows else "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("csv")
    ap.add_argument("--run", default=None)
    ap.add_argument("--device-type", default=None, help="cpu or cuda (default: from the file name)")
    a = ap.parse_args(argv)
    dev_type = a.device_type or ("cpu" if os.path.basename(a.csv) == "mollify_cpu.csv" else "cuda")
    ranking, run_id, device = rank(a.csv, a.run)
    with open(TABLE) as f:
        table = json.load(f)
    old = table["devices"].get(dev_type, {})
    for op, order in ranking.items():
        rest = [b for b in old.get(op, []) if b not in order and b != "torch"]
        table["devices"].setdefault(dev_type, {})[op] = order + rest + ([] if "torch" in order else ["torch"])
    src = f"{os.path.relpath(a.csv, ROOT)} run {run_id} ({device})"
    table.setdefault("sources", {})[dev_type] = src
    table["source"] = "; ".join(f"{k}: {v}" for k, v in sorted(table["sources"].items()))
    tmp = TABLE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=2)
        f.write("\n")
    os.replace(tmp, TABLE)
    print(json.dumps(table["devices"][dev_type], indent=2), "\nfrom", src)
    return 0


if __name__ == "__main__":
    sys.exit(main())

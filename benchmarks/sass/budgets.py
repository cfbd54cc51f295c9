"""The sm_90 budgets (``benchmarks/sass/budgets.json``) checked against a report's rows.

Shared by the CI test (``tests/test_sass_report.py``, a representative subset of the variants)
and by ``python -m benchmarks.sass.report --check`` (``make sass-check``: every variant, which
``.ci/run`` runs after ``make test``).

A row is the per-variant summary the report writes with ``--json``. A budget matches rows on
(backend, kernel family ``noise``/``blur`` from the kernel name, variant, dtype, layout) and,
where given, one exact kernel instance (e.g. one radius of a templated CUDA blur).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUDGETS = os.path.join(ROOT, "benchmarks", "sass", "budgets.json")


def family(kernel: str) -> str:
    return "blur" if "blur" in kernel.lower() else "noise"


def load(path: str = BUDGETS) -> List[Dict[str, object]]:
    with open(path) as f:
        return json.load(f)["budgets"]


def check(rows: Sequence[Dict[str, object]], backend: str, budgets: Sequence[Dict[str, object]]
          ) -> Tuple[List[str], int]:
    """``(failures, matched)``: one message per budget a row of ``backend`` misses, and how many
    (budget, row) pairs matched at all (0 means the kernels were renamed or redesigned)."""
    mine = [r for r in rows if r["backend"] == backend]
    failures, matched = [], 0
    for b in (b for b in budgets if b["backend"] == backend):
        hits = [r for r in mine if family(r["kernel"]) == b["kernel_family"] and r["variant"] == b["variant"]
                and r["dtype"] == b["dtype"] and r["layout"] == b["layout"]
                and b.get("kernel", r["kernel"]) == r["kernel"]]
        for r in hits:
            matched += 1
            name = f"{backend} {r['kernel']} {r['variant']} {r['dtype']} {r['layout']}"
            if r["unresolved"]:
                failures.append(f"{name}: loops without a trip count on the steady-state path: {r['unresolved']}")
            if max(r["spill_store"], r["spill_load"]) > b["max_spill_bytes"]:
                failures.append(f"{name}: spills {r['spill_store']}/{r['spill_load']} B > budget {b['max_spill_bytes']}")
            if r["instr_per_elem"] > b["max_instr_per_elem"]:
                failures.append(f"{name}: {r['instr_per_elem']:.1f} SASS instructions per element > budget "
                                f"{b['max_instr_per_elem']}")
            if "min_access_bits" in b:
                # x and out move as 128-bit words; the only narrower loads allowed are the (predicated)
                # per-sample parameter loads of the CUDA kernel, so: widest load and every store.
                if not r["ldg_bits"] or max(r["ldg_bits"]) < b["min_access_bits"] or \
                        min(r["stg_bits"] or [0]) < b["min_access_bits"]:
                    failures.append(f"{name}: global loads {r['ldg_bits']} / stores {r['stg_bits']} bits, want "
                                    f"{b['min_access_bits']}-bit")
    return failures, matched


def unbudgeted(rows: Sequence[Dict[str, object]], backend: str, budgets: Sequence[Dict[str, object]]) -> List[str]:
    """Rows of ``backend`` that no budget covers (named, for the quick check: every variant it
    compiles must be one the budgets hold, or the check would pass by matching nothing)."""
    out = []
    for r in (r for r in rows if r["backend"] == backend):
        if not any(family(r["kernel"]) == b["kernel_family"] and r["variant"] == b["variant"]
                   and r["dtype"] == b["dtype"] and r["layout"] == b["layout"]
                   and b.get("kernel", r["kernel"]) == r["kernel"] for b in budgets if b["backend"] == backend):
            out.append(f"{backend} {r['kernel']} {r['variant']} {r['dtype']} {r['layout']}")
    return out

"""CI budgets on the kernels' sm_90 machine code (benchmarks/sass_report.py, no GPU needed).

The tool compiles every Triton launch variant (through the backend's launch plan and Triton's own
binder, so with the argument types, constexprs and alignment hints of a real call: this replaces
the old hand-written-signature compile test) and every CUDA kernel (nvcc, the CMake flags), then
counts the steady-state SASS. This test fails on a regression of a committed budget
(benchmarks/sass_budgets.json): spills, 128-bit global access on the contiguous float32 noise path,
and an instructions-per-element ceiling per variant. It runs the tool in a subprocess with
TRITON_INTERPRET=0 because this test process defines the kernels in interpreter mode (conftest).
First run about 10 minutes on 2 cores (Triton 3.8 and nvcc; about 13 more under Triton 3.6 in
tests/triton_min_version.sh); compiled cubins are cached (~/.cache/mollify_fast/sass).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = os.path.join(ROOT, "benchmarks", "sass_budgets.json")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("sass")
    cmd = [sys.executable, "-m", "benchmarks.sass_report", "--out", str(out), "--json", str(out / "s.json"),
           "--no-baselines"]
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        cmd += ["--only", "triton"]
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT)
    assert (out / "s.json").exists(), f"the tool wrote no summary:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    data = json.load(open(out / "s.json"))
    assert not data["errors"], "the tool failed on: " + "\n".join(data["errors"])
    assert (out / "sass_sm90.csv").stat().st_size > 0 and (out / "sass_sm90.md").stat().st_size > 0
    return data


def _family(kernel: str) -> str:
    return "blur" if "blur" in kernel.lower() else "noise"


def _check(report, backend):
    rows = [r for r in report["rows"] if r["backend"] == backend]
    budgets = [b for b in json.load(open(BUDGETS))["budgets"] if b["backend"] == backend]
    assert rows, f"no {backend} kernel variant was analysed"
    failures, matched = [], 0
    for b in budgets:
        # An optional "kernel" names one instance (e.g. one radius of a templated CUDA blur, where
        # the runtime-radius and direct kernels share the variant's other keys).
        hits = [r for r in rows if _family(r["kernel"]) == b["kernel_family"] and r["variant"] == b["variant"]
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
    assert not failures, "SASS budget regressions (benchmarks/sass_budgets.json):\n" + "\n".join(failures)
    assert matched >= 1, (f"no {backend} variant matched a budget in {BUDGETS}: the kernels were renamed or "
                          f"redesigned; set new budgets from `python -m benchmarks.sass_report`")
    return matched


def test_triton_kernels_meet_sass_budgets(report):
    n = _check(report, "triton")
    # Every variant of the list (3 dtypes x 10 cases) compiled through the real launch path.
    assert len([r for r in report["rows"] if r["backend"] == "triton"]) >= 30
    assert n >= 1


def test_cuda_kernels_meet_sass_budgets(report):
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        pytest.skip("nvcc not found: the CUDA kernels cannot be compiled here (set NVCC or install the CUDA toolkit)")
    _check(report, "cuda")

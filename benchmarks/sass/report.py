"""Static sm_90 report of the mollify kernels, no GPU needed: SASS counts and a MODELED H100 speed.

    python -m benchmarks.sass.report [--ref GIT_REF] [--out DIR] [--only triton|cuda] [--quick] [--check]

For every kernel variant real launches produce (Triton: through the backend's launch plan and
Triton's own binder; CUDA: every ``__global__`` instantiation nvcc emits with the project's CMake
flags) it reports registers, spills, shared memory, global load/store widths and the steady-state
instructions per output element by class (see benchmarks/sass/disasm.py for what "steady state"
counts), then a MODELED H100 SXM throughput (issue, per pipe, memory; the smallest wins). The
baselines (eager PyTorch, torchvision blur + noise, torch.compile's generated kernel) are modeled
the same way, and a calibration table sets the model against the project's measured H100 run
(benchmarks/results/h100_baseline). Everything here is MODELED: ``make bench`` on a GPU measures,
and its numbers are the authority.

``--ref`` compiles the kernels of a git commit (``git archive`` into a temporary folder) instead
of the working tree. Writes ``sass_sm90.csv`` (long format) and ``sass_sm90.md`` into ``--out``
(default ``build/results/sass``, ignored by git; pass ``--out benchmarks/results`` to refresh the
committed report). ``--check`` compares every analysed variant with ``benchmarks/sass/budgets.json``
and exits 1 on a miss (``make sass-check``, run by CI). ``--quick`` analyses a representative subset:
the float32 contiguous noise and radius-3 blur Triton variants (every CUDA kernel still compiles:
nvcc builds them in one pass); ``make test`` checks that subset under each supported Triton.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib
import inspect
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

os.environ["TRITON_INTERPRET"] = "0"  # compile real kernels, never the interpreter's stand-ins
sys.setrecursionlimit(max(sys.getrecursionlimit(), 50000))  # path DP recurses once per block

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.sass import analyze as A  # noqa: E402
from benchmarks.sass import budgets as B  # noqa: E402
from benchmarks.sass import compile as C  # noqa: E402
from benchmarks.sass import disasm as D  # noqa: E402
from benchmarks.sass import model as M  # noqa: E402

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
SHAPE = (8, 3, 64, 64)  # divisible by 16 like the benchmark shapes; 64x64 planes give the blur's full 16x64 tile
ODD_SHAPE = (5, 3, 17, 19)  # numel 4845: not a multiple of 16, odd H and W
REAL_SHAPES = {"28x28 (MNIST)": (64, 1, 28, 28), "218x178 (CelebA)": (4, 3, 218, 178)}
RADII = {1.0: 3, 2.0: 6}  # blur_sigma -> radius ceil(3 sigma), the benchmark's two blur cases
BLUR_GROUP = re.compile(r"\bnoise\b")


@dataclass
class Case:
    backend: str
    kernel: str
    variant: str
    dtype: str
    layout: str
    radius: int = 0
    outputs: int = 1
    row: Dict[str, object] = field(default_factory=dict)
    threads_per_block: int = 0  # for the occupancy column (0: unknown)


# ------------------------------------------------------------------------------------ Triton
QUICK_TRITON = {("float32", "noise", "contiguous"), ("float32", "blur r3+noise", "contiguous")}


def _triton_cases(pkg_root: str, quick: bool = False):
    """(Case, Launch) for every Triton variant of the report, from the backend's own plan
    (``quick``: only the :data:`QUICK_TRITON` ones)."""
    import torch

    mt = importlib.import_module("mollify_fast.backends.mollify_triton")
    from mollify_fast._validate import resolve_params

    if not hasattr(mt, "_plan"):
        raise RuntimeError("mollify_fast.backends.mollify_triton has no _plan(x, out, noise, p, stream): "
                           "this tool needs the launch-plan API (commit 98e0bfe or later)")
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    out = []
    for dname, dtype in dt.items():
        specs = [("noise", "contiguous", SHAPE, None, False, False),
                 ("noise+eps", "contiguous", SHAPE, None, True, False),
                 ("noise per-sample", "contiguous", SHAPE, None, False, True),
                 ("noise", "channels_last", SHAPE, None, False, False),
                 ("noise", "odd size", ODD_SHAPE, None, False, False)]
        for bs, r in RADII.items():
            specs += [(f"blur r{r}+noise", "contiguous", SHAPE, bs, False, False)]
        specs += [("blur r3+noise per-sample", "contiguous", SHAPE, 1.0, False, True),
                  ("blur r3+noise", "channels_last", SHAPE, 1.0, False, False),
                  ("blur r3+noise", "odd size", ODD_SHAPE, 1.0, False, False)]
        # Real image sizes whose width is not a multiple of 16 (no divisibility hint, no
        # register cap) or of 4 (two Philox groups per thread): MNIST and CelebA's native frames.
        specs += [("blur r3+noise", layout, shape, 1.0, False, False) for layout, shape in REAL_SHAPES.items()]
        # mollify(noise=): the caller's eps (x's dtype) read where the kernels would draw.
        specs += [("noise, eps given", "contiguous", SHAPE, None, False, False),
                  ("blur r3+noise, eps given", "contiguous", SHAPE, 1.0, False, False)]
        for variant, layout, shape, bs, ret, per_sample in specs:
            if quick and (dname, variant, layout) not in QUICK_TRITON:
                continue
            x = torch.randn(shape).to(dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            o = torch.empty_like(x)
            nz = torch.empty_like(x) if ret else None
            n = shape[0]
            sig_t = torch.full((n,), 0.5) if per_sample else None
            blur_t = torch.full((n,), bs) if (per_sample and bs) else None
            blur = None if bs is None else blur_t if blur_t is not None else bs
            p = resolve_params(x, 0.5 if sig_t is None else sig_t, None, blur, RADII.get(bs) if bs else None)
            r = RADII.get(bs, 0) if bs else 0
            given = "eps given" in variant
            if not given:
                launches = mt._plan(x, o, nz, p, (1234, 0))
            elif "given_noise" in inspect.signature(mt._plan).parameters:
                launches = mt._plan(x, o, None, p, (1234, 0), given_noise=torch.randn_like(x))
            else:  # a baseline commit from before the launchers took the call record
                launches = mt._plan_full(x, o, torch.randn_like(x), p, (1234, 0), True)
            for L in launches:
                out.append((Case("triton", L.kernel.__name__, variant, dname, layout, r, 2 if ret else 1,
                                 threads_per_block=32 * L.options.get("num_warps", 4)), L))
    return out


def run_triton(pkg_root: str, rows: list, log, quick: bool = False) -> None:
    compiled = {}
    for case, L in _triton_cases(pkg_root, quick):
        t0 = time.time()
        comp = C.triton_compile(L.kernel, L.args, {**L.constexprs, **L.options})
        threads = math.prod(L.grid) * comp.info["num_warps"] * 32
        env = {"r": case.radius, **{k: v for k, v in L.constexprs.items() if isinstance(v, (int, float))}}
        res = A.analyze(comp.cubin, comp.symbol, comp.spills, env, elem_bytes=DTYPE_BYTES[case.dtype],
                        outputs=case.outputs, elements_per_thread=L.elements / threads,
                        required_vars=("r",) if case.radius else ())
        case.row = {"attrs": comp.info["attrs"], "constexprs": {k: v for k, v in L.constexprs.items()}}
        rows.append((case, res))
        compiled[comp.cubin] = 1
        log(f"  triton {case.kernel} {case.variant} {case.dtype} {case.layout}: "
            f"{sum(res.per_elem.values()):.1f} instr/elem ({time.time() - t0:.1f}s)")


# -------------------------------------------------------------------------------------- CUDA
def run_cuda(src_root: str, rows: list, log) -> None:
    import torch
    from mollify_fast.backends._native import coalesce

    source = os.path.join(src_root, "kernels", "mollify_cuda.cu")
    cubin, spills, flags = C.cuda_compile(source, src_root)
    funcs = D.disassemble(cubin)
    res = D.resource_usage(cubin)
    text = open(source).read()
    for inc in ("kernels",):
        d = os.path.join(src_root, inc)
        for name in os.listdir(d):
            if name.endswith((".cuh", ".h")):
                text += open(os.path.join(d, name)).read()
    m = re.search(r"constexpr\s+int\s+kThreads\s*=\s*(\d+)", text)
    threads = int(m.group(1)) if m else 0
    for sym in funcs:
        dm = C.demangle_kernel(sym)
        if dm is None or sym not in res:
            continue
        name, targs = dm
        params = C.template_params(text, name)
        tmpl = dict(zip(params, targs))
        # The stored dtype counts the elements: the first dtype argument, but the last one (out's)
        # for the input-map kernel <x dtype, out dtype>.
        dtype = next((a for a in (targs[::-1] if "mapped" in name else targs) if a in DTYPE_BYTES), None)
        if dtype is None:
            continue
        flags_s = ", ".join(f"{k}={v}" for k, v in tmpl.items() if v not in DTYPE_BYTES)
        # Template flags by name: kVec / kContiguous (the 4-wide vector path), kPerSample (one
        # sigma/alpha per sample), KR (the blur radius; -1 = runtime radius).
        contig = any(re.search(r"contig|^k?vec$", k, re.I) and v in ("1", "true") for k, v in tmpl.items())
        per_sample = any(re.search(r"per_?sample", k, re.I) and v in ("1", "true") for k, v in tmpl.items())
        radius_t = next((int(v) for k, v in tmpl.items() if re.search(r"radius|^k?r$", k, re.I)), None)
        if radius_t is not None and radius_t < 0:
            radius_t = None  # the runtime-radius kernel: analysed at every case radius
        blur = "blur" in name.lower()
        given = "noise_in" in name.lower()  # noise=: reads the caller's eps, writes no eps
        x = torch.empty(SHAPE)
        if not contig and not blur:
            x = x.contiguous(memory_format=torch.channels_last)
        ndims = len(coalesce(list(x.shape), [list(x.stride())] * 2)[0]) if not blur else \
            len(coalesce(list(x.shape[:-2]), [list(x.stride()[:-2])] * 2)[0])
        radii = [radius_t] if radius_t is not None else (sorted(RADII.values()) if blur else [0])
        for r in radii:
            for outputs in (1, 2) if not (blur or given) else (1,):
                keep = (lambda i: True) if outputs == 2 else \
                    (lambda i: not i.pred and not any(BLUR_GROUP.search(A.source_line(p, n)) for p, n in i.locs))
                out = A.analyze(cubin, sym, spills.get(sym, (0, 0)), {"r": r, "ndims": ndims},
                                elem_bytes=DTYPE_BYTES[dtype], outputs=outputs, unroll_marker=True,
                                store_filter=keep, required_vars=("r",) if blur else (), funcs=funcs, res=res)
                variant = (f"blur r{r}+noise" if blur else "noise") + ("+eps" if outputs == 2 else "") + \
                    (" per-sample" if per_sample else "") + (", eps given" if given else "")
                layout = "contiguous (vector path)" if contig else ("any strides" if blur else "strided")
                case = Case("cuda", f"{name}<{', '.join(targs)}>", variant, dtype, layout, r, outputs,
                            {"template": flags_s, "nvcc_flags": " ".join(flags)}, threads_per_block=threads)
                rows.append((case, out))
                log(f"  cuda {case.kernel} {variant}: {sum(out.per_elem.values()):.1f} instr/elem")


# -------------------------------------------------------------------------------- baselines
def eager_baselines(dtype: str) -> List[Tuple[str, str, int, float, str]]:
    """(name, variant, kernels, bytes per element, how counted): MODELED memory traffic of peers.

    Each elementwise kernel reads its inputs and writes its output once (DRAM; no fusion).
    """
    b = DTYPE_BYTES[dtype]
    rows = [("eager", "noise", 4, 8 * b,
             "alpha*x (read x, write t1) + randn_like (write eps) + sigma*eps (read, write t2) + t1+t2 "
             "(read 2, write out): 4 kernels, 8 element-accesses")]
    for bs, r in RADII.items():
        k = 2 * r + 1
        pad = (1 + (1 + 2 * r / 64) ** 2)  # reflect pad of a 64x64 plane: read x, write the padded copy
        rows.append(("torchvision blur+gaussian_noise", f"blur r{r}+noise", 2 + 4 + 3, (pad + (1 + 2 * r / 64) ** 2 + 1 + 7) * b,
                     f"torchvision gaussian_blur_image: kernel build (tiny), torch_pad(reflect) (read x, write "
                     f"padded), conv2d {k}x{k} depthwise (read padded, write out); gaussian_noise_image: "
                     "randn_like (write), *sigma (read, write), +mean (read, write), image+noise (read 2, write), "
                     "clamp (read, write)"))
    return rows


def _inductor_source() -> str:
    """Which randn torch.compile emits for ``alpha*x + sigma*randn_like(x)`` on CUDA (read from inductor)."""
    try:
        import inspect

        from torch._inductor.codegen import triton as it

        src = inspect.getsource(it.TritonOverrides.randn)
        return "triton_helpers.randn4x" if "randn4x" in src else "tl.randn"
    except Exception as e:  # an inductor without TritonOverrides
        return f"tl.randn (inductor source not readable: {type(e).__name__})"


def run_baseline_kernels(rows: list, log) -> None:
    """torch.compile's generated pointwise kernel and the Triton tutorial's vector add, compiled here."""
    import torch

    from benchmarks.sass import reference_kernels as RK

    n = 1 << 20
    for dname, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x = torch.empty(n, dtype=dtype)
        o = torch.empty_like(x)
        seeds = torch.zeros(1, dtype=torch.int64)
        kernels = [("torch.compile (inductor, tl.randn per element)", RK.inductor_randn_kernel)]
        if RK.HAS_RANDN4X:
            kernels.append(("torch.compile (inductor, triton_helpers.randn4x)", RK.inductor_randn4x_kernel))
        for label, k in kernels:
            comp = C.triton_compile(k, (x, seeds, o, 0, n), {"XBLOCK": RK.XBLOCK, "num_warps": 4})
            threads = (n // RK.XBLOCK) * 4 * 32
            res = A.analyze(comp.cubin, comp.symbol, comp.spills, {}, elem_bytes=DTYPE_BYTES[dname], outputs=1,
                            elements_per_thread=n / threads)
            rows.append((Case("baseline", label, "noise", dname, "contiguous", threads_per_block=128), res))
            log(f"  {label} {dname}: {sum(res.per_elem.values()):.1f} instr/elem")
    x = torch.empty(n)
    comp = C.triton_compile(RK.add_kernel, (x, x, torch.empty_like(x), n), {"BLOCK_SIZE": 1024, "num_warps": 4})
    res = A.analyze(comp.cubin, comp.symbol, comp.spills, {}, elem_bytes=4, outputs=1,
                    elements_per_thread=n / ((n // 1024) * 128))
    rows.append((Case("reference", "triton tutorial 01 add_kernel", "x+y", "float32", "contiguous",
                      threads_per_block=128), res))


# ----------------------------------------------------------------------------------- output
def bytes_per_elem(case: Case) -> float:
    b = DTYPE_BYTES[case.dtype]
    if case.kernel.startswith("triton tutorial"):
        return 3 * b
    return (1 + case.outputs) * b  # one read of x (the blur's halo from cache), each output written once


def versions() -> Dict[str, str]:
    import torch
    import triton

    nvcc = subprocess.run([os.environ.get("NVCC", "nvcc"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+)", nvcc)
    return {"triton": triton.__version__, "torch": torch.__version__, "nvcc": m.group(1) if m else "none",
            "ptxas": D.tool_version("ptxas"), "nvdisasm": D.tool_version("nvdisasm")}


def occupancy(case: Case, res: A.Result) -> int:
    """Resident warps per SM (of 64) at the kernel's registers and block size; 0 if unknown."""
    if not case.threads_per_block:
        return 0
    return M.resident_warps(res.regs, case.threads_per_block, res.shared)


def summarize(case: Case, res: A.Result, bw: float) -> Dict[str, object]:
    n = sum(res.per_elem.values())
    cls = M.classify(res.per_elem)
    bound = M.bounds(res.per_elem, bytes_per_elem(case), bw)
    return {"instr_per_elem": n, "classes": cls, "bound": bound, "bytes_per_elem": bytes_per_elem(case)}


def write_outputs(rows, extra, out_dir: str, vers: Dict[str, str], bw: Dict[str, float], ref: str,
                  calib: List[Dict[str, object]], runtime_s: float,
                  measured: str = "benchmarks/results/h100_baseline/mollify_nvidia_h100_80gb_hbm3.csv") -> Tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    csv_path = os.path.join(out_dir, "sass_sm90.csv")
    fields = ["backend", "kernel", "variant", "dtype", "layout", "metric", "value", "unit", "source", "triton", "nvcc",
              "ptxas", "date"]
    common = {"source": ref, "triton": vers["triton"], "nvcc": vers["nvcc"], "ptxas": vers["ptxas"], "date": date}
    md = []
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()

        def put(case, metric, value, unit):
            w.writerow({"backend": case.backend, "kernel": case.kernel, "variant": case.variant, "dtype": case.dtype,
                        "layout": case.layout, "metric": metric, "value": value, "unit": unit, **common})

        for case, res in rows:
            s = summarize(case, res, bw["bytes_per_s"])
            put(case, "registers", res.regs, "per thread")
            if case.threads_per_block:
                put(case, "threads_per_block", case.threads_per_block, "threads")
                put(case, "resident_warps_per_sm", occupancy(case, res), "warps (of 64)")
            put(case, "spill_store_bytes", res.spill_store, "bytes")
            put(case, "spill_load_bytes", res.spill_load, "bytes")
            put(case, "stack_bytes", res.stack, "bytes")
            put(case, "shared_bytes", res.shared, "bytes (static)")
            put(case, "ldg_bits", "/".join(map(str, res.ldg_bits)), "bits")
            put(case, "stg_bits", "/".join(map(str, res.stg_bits)), "bits")
            put(case, "instr_per_elem", round(s["instr_per_elem"], 2), "SASS instr per output element (steady state)")
            for c, v in s["classes"].items():
                put(case, f"instr_per_elem[{c}]", round(v, 3), "per element")
            put(case, "elements_per_thread_unit", round(res.elements_per_thread, 3), "elements per counted path")
            put(case, "unresolved_loops", len(res.unresolved), "loops counted once")
            bd: M.Bounds = s["bound"]
            put(case, "MODELED_issue_bound", round(bd.issue / 1e9, 2), "Gelem/s (MODELED H100 SXM)")
            for p, v in bd.pipes.items():
                if math.isfinite(v):
                    put(case, f"MODELED_pipe_bound[{p}]", round(v / 1e9, 2), "Gelem/s (MODELED)")
            put(case, "MODELED_memory_bound", round(bd.memory / 1e9, 2), "Gelem/s (MODELED)")
            put(case, "MODELED_rate", round(bd.rate / 1e9, 2), "Gelem/s (MODELED)")
            put(case, "MODELED_limiter", bd.winner, "")
            put(case, "MODELED_fraction_of_memory_bound", round(bd.rate / bd.memory, 3), "1")
            put(case, "counted", res.counted, "")
        for name, variant, kernels, bpe, how in extra:
            c = Case("baseline", name, variant, "float32", "contiguous")
            put(c, "kernels", kernels, "launches")
            put(c, "bytes_per_elem", round(bpe, 2), "bytes (DRAM, MODELED)")
            put(c, "MODELED_memory_bound", round(bw["bytes_per_s"] / bpe / 1e9, 2), "Gelem/s (MODELED)")
        for c in calib:
            cc = Case("calibration", c["provider"], c["kernel"], c["dtype"], c["shape"])
            put(cc, "MODELED_time", round(c["modeled_ms"], 4), "ms")
            put(cc, "measured_time_p50", round(c["measured_ms"], 4), "ms (H100, h100_baseline)")
            put(cc, "measured_over_modeled", round(c["ratio"], 2), "x")

    md.append("# Static sm_90 report: SASS counts and a MODELED H100 SXM throughput\n")
    md.append(f"Generated by `python -m benchmarks.sass.report` on {date} from `{ref}` with Triton {vers['triton']}, "
              f"nvcc {vers['nvcc']}, ptxas {vers['ptxas']}, nvdisasm {vers['nvdisasm']} (runtime {runtime_s:.0f} s). "
              "No GPU ran anything here: every throughput below is **MODELED**. The measured numbers "
              "(`make bench` on a GPU) are the authority wherever they exist.\n")
    md.append("## Model (MODELED) and its sources\n")
    md.append(f"- Issue bound: {M.SMS} SMs x {M.CLOCK_HZ / 1e9:.2f} GHz x 4 schedulers x 32 lanes / "
              "(SASS instructions per element). " + M.SOURCES["SMs"] + "; " + M.SOURCES["clock"] + "; "
              + M.SOURCES["issue"] + ".")
    md.append("- Pipe bounds: " + M.SOURCES["pipes"] + ". Instructions outside those classes (uniform U*, moves, "
              "memory) count against issue only.")
    md.append(f"- Memory bound: bytes per element / {bw['bytes_per_s'] / 1e12:.2f} TB/s = "
              + M.SOURCES["bandwidth"] + f" ({bw['shape']} float32, {bw['time_s'] * 1e3:.4f} ms, {bw['device']}). "
              "Bytes per element: one read of x and one write per output (the blur's halo assumed to hit in cache).")
    md.append("- Steady state: the path that stores every output, runs the loops the case requires, then issues "
              "the fewest instructions (slow paths skipped: 64-bit division when the operands fit in 32 bits, "
              "Payne-Hanek sin/cos reduction, per-sample loads on scalar cases); loops x their trip counts from "
              "the source (`for` bounds with r = blur radius); Triton: whole program / elements per thread of the "
              "launch; CUDA: one grid-stride iteration / the elements it stores. Predicated-off instructions count "
              "(they issue). The `counted` column of the CSV says what was counted for each row.\n")
    md.append("- Occupancy (warps/SM, not modeled: a static fact of the cubin and the launch): "
              + M.SOURCES["occupancy"] + ". The model above does not use it: a memory-bound kernel needs enough "
              "loads in flight per SM, from warps or from loads each thread issues ahead (ptxas hoists the blur's "
              "row loads, which is most of its registers). Low occupancy is what the model cannot see.\n")
    md.append("## Kernels\n")
    md.append("| backend | kernel | variant | dtype | layout | regs | warps/SM | spills (B) | LDG/STG bits | instr/elem | "
              "IMAD | LOP3 | IADD3 | FFMA | FMUL/FADD | MUFU | CONV | LDG | STG | BRA | other | "
              "MODELED limiter | MODELED Gelem/s | MODELED % of memory bound |")
    md.append("|" + "---|" * 24)
    for case, res in rows:
        s = summarize(case, res, bw["bytes_per_s"])
        c = s["classes"]
        bd = s["bound"]
        unres = " (unresolved loops!)" if res.unresolved else ""
        occ = occupancy(case, res)
        md.append(f"| {case.backend} | {case.kernel} | {case.variant} | {case.dtype} | {case.layout} | {res.regs} | "
                  f"{f'{occ} ({100 * occ // 64}%)' if occ else '-'} | {res.spill_store}/{res.spill_load} | {'/'.join(map(str, res.ldg_bits))} / "
                  f"{'/'.join(map(str, res.stg_bits))} | {s['instr_per_elem']:.1f}{unres} | "
                  + " | ".join(f"{c[k]:.1f}" for k in M.CLASSES if k != "OTHER" and k != "BRANCH")
                  + f" | {c['BRANCH']:.1f} | {c['OTHER']:.1f} | {bd.winner} | {bd.rate / 1e9:.1f} | "
                  f"{100 * bd.rate / bd.memory:.0f}% |")
    md.append("\n## Baselines by memory traffic (MODELED)\n")
    md.append("| provider | case | kernels | bytes/elem (float32) | MODELED Gelem/s (memory bound) | counted from |")
    md.append("|---|---|---|---|---|---|")
    for name, variant, kernels, bpe, how in extra:
        md.append(f"| {name} | {variant} | {kernels} | {bpe:.1f} | {bw['bytes_per_s'] / bpe / 1e9:.1f} | {how} |")
    md.append(f"\ntorch.compile: inductor in torch {vers['torch']} emits `{_inductor_source()}` for randn_like "
              "in a 1-D pointwise kernel (torch/_inductor/codegen/triton.py, TritonOverrides.randn; older "
              "inductors emit `tl.randn`, one Philox call per element). Both equivalents are compiled above "
              "(benchmarks/sass/reference_kernels.py).\n")
    if calib:
        md.append(f"## Calibration: MODELED vs measured on the H100 ({measured})\n")
        which = ("the pre-redesign kernels of commit d838c8a (so it calibrates the model only when the analysed "
                 "ref has those kernels: `--ref 98e0bfe`)" if "h100_baseline" in measured else
                 "the analysed kernels (the same commit's code, measured with `benchmarks/gpu_session.sh`)")
        md.append("Modeled time = numel / MODELED rate (no launch latency, no tail effects). Measured = p50 of the "
                  f"project's H100 run (torch 2.11, Triton 3.6) of {which}. Small shapes are dominated by launch "
                  "and Python overhead, which the model leaves out; the largest shape shows the model's quality.\n")
        md.append("| provider | case | dtype | shape | MODELED ms | measured p50 ms | measured / MODELED |")
        md.append("|---|---|---|---|---|---|---|")
        for c in calib:
            md.append(f"| {c['provider']} | {c['kernel']} | {c['dtype']} | {c['shape']} | {c['modeled_ms']:.4f} | "
                      f"{c['measured_ms']:.4f} | {c['ratio']:.2f} |")
    md_path = os.path.join(out_dir, "sass_sm90.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    return csv_path, md_path


def calibration(rows, baseline_csv: str, bw: float) -> List[Dict[str, object]]:
    """MODELED time of each analysed kernel at the measured shapes vs the measured H100 p50."""
    out = []
    want = {}
    for case, res in rows:
        if case.backend == "triton" and case.layout == "contiguous" and case.outputs == 1 and "per-sample" not in case.variant:
            want[("mollify_fast[triton]", case.variant, case.dtype)] = (case, res)
        if case.backend == "cuda" and case.outputs == 1 and ("vector" in case.layout or "blur" in case.variant):
            want[("mollify_fast[cuda]", case.variant, case.dtype)] = (case, res)
    with open(baseline_csv) as f:
        meas = [r for r in csv.DictReader(f) if r["metric"] == "time"]
    for r in meas:
        variant = "noise" if r["kernel"] == "noise" else f"blur r{RADII.get(float(r['blur_sigma'] or 0), 0)}+noise"
        key = (r["provider"], variant, r["dtype"])
        if key not in want:
            continue
        case, res = want[key]
        numel = math.prod(int(s) for s in r["shape"].split("x"))
        rate = summarize(case, res, bw)["bound"].rate
        modeled = numel / rate * 1e3
        out.append({"provider": r["provider"], "kernel": variant, "dtype": r["dtype"], "shape": r["shape"],
                    "modeled_ms": modeled, "measured_ms": float(r["p50"]), "ratio": float(r["p50"]) / modeled})
    return out


def _checkout(ref: str) -> str:
    d = tempfile.mkdtemp(prefix="sass_ref_")
    data = subprocess.run(["git", "-C", ROOT, "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", d], input=data, check=True)
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", default=None, help="git ref whose kernels to analyse (default: the working tree)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "results", "sass"),
                    help="output folder (default build/results/sass; benchmarks/results holds the committed report)")
    ap.add_argument("--only", choices=["triton", "cuda"], default=None)
    ap.add_argument("--quick", action="store_true", help="a representative subset of the Triton variants")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless every analysed variant meets benchmarks/sass/budgets.json")
    ap.add_argument("--json", default=None, help="also write the per-kernel summary as JSON here (for tests)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--measured", default=None,
                    help="a bench_mollify CSV measured on an H100 with the analysed kernels, for the calibration "
                         "table (default: the pre-redesign run in benchmarks/results/h100_baseline)")
    args = ap.parse_args(argv)
    t0 = time.time()
    src = ROOT
    if args.ref:
        src = _checkout(args.ref)
        sys.path.insert(0, src)
        for m in [m for m in sys.modules if m == "mollify_fast" or m.startswith("mollify_fast.")]:
            del sys.modules[m]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    vers = versions()
    bw = M.copy_bandwidth(M.default_baseline_csv(ROOT))
    rows: list = []
    errors = []
    for which, fn in (("triton", lambda: run_triton(src, rows, log, args.quick)),
                      ("cuda", lambda: run_cuda(src, rows, log))):
        if args.only and args.only != which:
            continue
        try:
            fn()
        except Exception as e:  # report what compiled; the summary says what failed
            errors.append(f"{which}: {type(e).__name__}: {e}")
            log(f"FAILED {which}: {type(e).__name__}: {str(e)[:2000]}")
    extra = []
    if not args.no_baselines:
        extra = eager_baselines("float32")
        try:
            run_baseline_kernels(rows, log)
        except Exception as e:
            errors.append(f"baselines: {type(e).__name__}: {e}")
            log(f"FAILED baselines: {e}")
    measured = args.measured or M.default_baseline_csv(ROOT)
    calib = calibration(rows, measured, bw["bytes_per_s"])
    ref = args.ref or "working tree"
    csv_path, md_path = write_outputs(rows, extra, args.out, vers, bw, ref, calib, time.time() - t0,
                                      os.path.relpath(measured, ROOT))
    summary = []
    for case, res in rows:
        s = summarize(case, res, bw["bytes_per_s"])
        summary.append({"backend": case.backend, "kernel": case.kernel, "variant": case.variant,
                        "dtype": case.dtype, "layout": case.layout, "outputs": case.outputs,
                        "regs": res.regs, "resident_warps": occupancy(case, res),
                        "spill_store": res.spill_store, "spill_load": res.spill_load,
                        "ldg_bits": res.ldg_bits, "stg_bits": res.stg_bits,
                        "instr_per_elem": s["instr_per_elem"], "unresolved": res.unresolved,
                        "limiter": s["bound"].winner})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": summary, "errors": errors, "versions": vers}, f, indent=1)
    print(f"wrote {csv_path} and {md_path} ({len(rows)} kernel variants, {time.time() - t0:.0f} s)")
    for e in errors:
        print("ERROR", e[:3000])
    if args.check and not errors:
        errors += check_budgets(summary, [b for b in ("triton", "cuda") if args.only in (None, b)])
    return 1 if errors else 0


def check_budgets(summary, backends) -> List[str]:
    """Every analysed variant against benchmarks/sass/budgets.json; prints and returns the misses."""
    budgets = B.load()
    failures = []
    for backend in backends:
        missed, matched = B.check(summary, backend, budgets)
        if not matched:
            missed.append(f"no {backend} variant matched a budget in {B.BUDGETS}: the kernels were renamed or "
                          f"redesigned; set new budgets from `python -m benchmarks.sass.report`")
        print(f"sm_90 budgets, {backend}: {matched} variant(s) checked, {len(missed)} miss(es)")
        failures += missed
    for f in failures:
        print("BUDGET", f)
    return failures


if __name__ == "__main__":
    sys.exit(main())

"""One kernel variant -> resources, load/store widths, and steady-state instructions per element.

Trip counts come from the source line of each loop (nvdisasm's line table points the latch
branch at the ``for`` statement): ``for k in range(a, b)`` (Triton) and
``for (int k = a; k <= b; ++k)`` / ``--k`` forms (CUDA) are evaluated with the case's variables
(``r`` = blur radius, ``ndims`` = dims the index is unravelled over, the launch's constexprs).
A loop whose bounds do not evaluate is counted once and reported. nvcc unrolls the innermost
counted loops: an innermost CUDA loop whose body holds u global loads (else u MUFU.EX2, one per
tap) runs trips/u times (the remainder iterations, straight-line after the loop, are costed at
1/u of an unrolled iteration each).
"""
from __future__ import annotations

import ast
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from . import disasm as D

_PY_RANGE = re.compile(r"\bfor\s+\w+\s+in\s+(?:tl\.)?(?:static_)?range\((.*)\)\s*:")
_C_FOR = re.compile(r"\bfor\s*\(\s*[\w:<>]+\s+(\w+)\s*=\s*([^;]+);\s*(\w+)\s*(<=|<|>=|>)\s*([^;]+);\s*(\+\+\w+|\w+\+\+|--\w+|\w+--)\s*\)")


def _eval(expr: str, env: Dict[str, float]) -> Optional[float]:
    expr = expr.strip()
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in env:
            return None
        if not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant, ast.Load, ast.Add,
                                 ast.Sub, ast.Mult, ast.FloorDiv, ast.USub, ast.UAdd)):
            return None
    return float(eval(compile(tree, "<trip>", "eval"), {"__builtins__": {}}, env))


def trip_count(text: str, env: Dict[str, float]) -> Optional[float]:
    m = _PY_RANGE.search(text)
    if m:
        parts = [p for p in m.group(1).split(",") if p.strip()]
        vals = [_eval(p, env) for p in parts]
        if any(v is None for v in vals) or not 1 <= len(vals) <= 3:
            return None
        start, stop, step = (0.0, vals[0], 1.0) if len(vals) == 1 else (vals[0], vals[1], vals[2] if len(vals) == 3 else 1.0)
        return max(0.0, -(-(stop - start) // step))
    m = _C_FOR.search(text)
    if m:
        var, a, var2, cmp, b, _ = m.groups()
        a, b = _eval(a, env), _eval(b, env)
        if var != var2 or a is None or b is None:
            return None
        n = {"<": b - a, "<=": b - a + 1, ">": a - b, ">=": a - b + 1}[cmp]
        return max(0.0, n)
    return None


_SRC: Dict[str, List[str]] = {}


def source_line(path: str, line: int) -> str:
    if path not in _SRC:
        try:
            with open(path) as f:
                _SRC[path] = f.read().splitlines()
        except OSError:
            _SRC[path] = []
    lines = _SRC[path]
    return lines[line - 1] if 0 < line <= len(lines) else ""


def access_bits(op: str) -> int:
    for w, b in ((".128", 128), (".64", 64), (".U16", 16), (".S16", 16), (".U8", 8), (".S8", 8)):
        if w in op:
            return b
    return 32


@dataclass
class Result:
    kernel: str
    regs: int
    stack: int
    shared: int
    spill_store: int
    spill_load: int
    per_elem: Counter  # opcode -> instructions per output element (steady state)
    elements_per_thread: float
    counted: str  # what was counted
    ldg_bits: List[int]
    stg_bits: List[int]
    loops: List[str]
    unresolved: List[str] = field(default_factory=list)


def analyze(cubin: str, symbol: str, spills: Tuple[int, int], env: Dict[str, float], *, elem_bytes: int,
            outputs: int, elements_per_thread: Optional[float] = None, unroll_marker: bool = False,
            store_filter=None, required_vars=(), funcs=None, res=None) -> Result:
    """Steady-state counts of ``symbol`` in ``cubin``.

    ``elements_per_thread``: output elements one thread writes over the whole program (a Triton
    program without a grid-stride loop). Without it the kernel must have a grid-stride loop (its
    latch line mentions ``gridDim``); elements per iteration are the global bytes it stores
    divided by ``elem_bytes * outputs``. ``required_vars``: loops whose bounds name one of these
    (``r`` for a blur case) must run on the chosen path (see :func:`disasm.hot_path`).
    """
    funcs = funcs if funcs is not None else D.disassemble(cubin)
    res = res if res is not None else D.resource_usage(cubin)
    ins = funcs[symbol]
    f = D.build_cfg(symbol, ins)
    loops = D.find_loops(f, f.entry)
    unresolved: List[str] = []

    def trips(lp: D.Loop, it: D.PathCost):
        locs = D.loop_lines(f, lp)
        where = f"{os.path.basename(locs[0][0])}:{locs[0][1]}" if locs else f"{lp.header:#x}"
        texts = [(p, n, source_line(p, n)) for p, n in locs[:6]]
        # A grid-stride loop: `gridDim` in the loop (a __global__ body), or the `g += stride` of a
        # __host__ __device__ per-thread function that the wrapper hands gridDim.x * blockDim.x.
        if any("gridDim" in t or re.search(r"\+=\s*stride\b", t) for _, _, t in texts):
            per = it.store_bytes / (elem_bytes * outputs)
            return 1.0, per, f"grid-stride loop ({where}): {per:g} elements per thread-iteration (from its stores)", False
        for p, n, t in texts:
            if not re.search(r"\bfor\b", t):
                continue
            n_trips = trip_count(t, env)
            if n_trips is None:
                continue
            u = 1
            if unroll_marker and not lp.children:
                u = D.loop_markers(f, lp, "LDG") or D.loop_markers(f, lp, "MUFU.EX2") or 1
            desc = f"{os.path.basename(p)}:{n} `{t.strip()}`: {n_trips:g} trips"
            if u > 1:
                desc += f", unrolled x{u} -> {n_trips / u:g} iterations"
            required = n_trips > 0 and any(re.search(rf"\b{v}\b", t) for v in required_vars)
            return n_trips / u, None, desc + (" (required by the case)" if required else ""), required
        msg = f"loop at {where} ({lp.header:#x}): no trip count from its source line; counted once"
        unresolved.append(msg)
        return None, None, msg, False

    whole, grid, loop_desc = D.hot_path(f, trips, store_filter)
    if grid is not None:
        path, per = grid
        counted = f"one grid-stride iteration (nested loops x trips), / {per:g} elements"
    else:
        if elements_per_thread is None:
            elements_per_thread = whole.store_bytes / (elem_bytes * outputs)
        path, per = whole, elements_per_thread
        counted = f"whole-program path (loops x trips, slow/cold branches skipped), / {per:g} elements per thread"
    # Unknown loops that the chosen path could not avoid (others are slow paths it skipped).
    unresolved = [n for n in path.notes if "no trip-count rule" in n]
    per_elem = Counter({k: v / per for k, v in path.ops.items()}) if per else Counter()
    ldg = sorted({access_bits(op) for op in path.ops if op.startswith("LDG")})
    stg = sorted({access_bits(op) for op in path.ops if op.startswith("STG")})
    r = res.get(symbol)
    return Result(symbol, r.regs if r else -1, r.stack if r else -1, r.shared if r else -1, spills[0], spills[1],
                  per_elem, per, counted, ldg, stg, loop_desc, unresolved)

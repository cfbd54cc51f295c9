"""SASS of a cubin -> per-kernel basic blocks, loops and the steady-state instruction path.

The disassembler is the ``nvdisasm`` / ``cuobjdump`` that ship inside Triton's wheel (or any on
PATH). ``nvdisasm -c -gi`` prints every instruction with its address and the source location
chain (file, line, and the lines it was inlined at); we split the text of each kernel into
basic blocks at branch targets and after branches, build the control-flow graph, and find the
natural loops (back edges of a depth-first search from the entry).

Which path is "the steady state" is decided by :func:`hot_path`: among the paths through a loop
body (or through the whole kernel), take the one that

1. stores the most global bytes (every output element must be written: a path that skips the
   stores is a bounds or early-exit path; a vector path of one 16-byte store ties with four
   4-byte stores); stores the case does not make (``store_filter``: the returned noise when it
   is not asked for, a runtime branch in the CUDA kernels) do not count here,
2. then runs the most loops the case requires (``trips`` marks them: the blur tap loops of a
   blur case; a ``blur_sigma == 0`` early return skips them and is not the case measured),
3. then issues the fewest instructions (what is left is a slow path: the 64-bit division
   subroutine when the operands fit in 32 bits, the Payne-Hanek reduction of sin/cos for huge
   arguments, the per-sample parameter load when the parameters are scalars).

A loop whose trip count is known and at least 1 cannot be skipped: the edge of its zero-trip
guard (a predecessor of the header that branches straight to the loop's exit) is removed.
A nested loop counts as one node whose cost is ``trips x`` its own steady-state iteration;
``CALL.REL`` adds the callee's cheapest path to its return.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_LOC = re.compile(r'^\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_LABEL = re.compile(r"^(\.L_x_\d+|\$[\w$.]+):")
_TARGET = re.compile(r"`\(([^)]+)\)")
_SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")


def find_tool(name: str) -> str:
    """Path of a CUDA binary tool: Triton's bundled copy first (same version in CI and here)."""
    try:
        import triton

        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(p):
            return p
    except ImportError:
        pass
    p = shutil.which(name)
    if p is None:
        raise FileNotFoundError(f"{name} not found: install triton (it bundles {name}) or the CUDA toolkit")
    return p


def tool_version(name: str) -> str:
    out = subprocess.run([find_tool(name), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else "unknown"


@dataclass
class Instr:
    addr: int
    pred: str  # "" or e.g. "@!P0"
    op: str  # full opcode with modifiers, e.g. "LDG.E.128"
    args: str
    locs: Tuple[Tuple[str, int], ...]  # innermost first, then the lines it was inlined at


@dataclass
class Block:
    start: int
    instrs: List[Instr] = field(default_factory=list)
    succs: List[int] = field(default_factory=list)  # block start addresses
    calls: List[int] = field(default_factory=list)  # subroutine entry addresses


@dataclass
class Function:
    name: str
    blocks: Dict[int, Block]
    entry: int


def disassemble(cubin: str) -> Dict[str, List[Instr]]:
    """Kernel name -> its instructions (with source locations), from ``nvdisasm -c -gi``."""
    text = subprocess.run([find_tool("nvdisasm"), "-c", "-gi", cubin], capture_output=True, text=True, check=True).stdout
    funcs: Dict[str, List[Instr]] = {}
    labels: Dict[str, Dict[str, int]] = {}
    cur: Optional[str] = None
    locs: List[Tuple[str, int]] = []
    fresh = True  # the next //## line starts a new location chain
    pending: List[str] = []
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            cur = m.group(1)
            funcs[cur], labels[cur] = [], {}
            continue
        if cur is None:
            continue
        m = _LOC.match(line)
        if m:
            if fresh:
                locs, fresh = [], False
            if not locs:
                locs.append((m.group(1), int(m.group(2))))
            if m.group(3):
                locs.append((m.group(3), int(m.group(4))))
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[cur][lab] = addr
            pending = []
            funcs[cur].append(Instr(addr, (m.group(2) or "").strip(), m.group(3), m.group(4), tuple(locs)))
            fresh = True
    # Resolve branch / call targets to addresses (stored in args as "->0x...").
    for name, ins in funcs.items():
        for i in ins:
            t = _TARGET.search(i.args)
            if t and t.group(1) in labels[name]:
                i.args += f" ->{labels[name][t.group(1)]:#x}"
    return funcs


def _target(i: Instr) -> Optional[int]:
    m = re.search(r"->(0x[0-9a-f]+)$", i.args)
    return int(m.group(1), 16) if m else None


def build_cfg(name: str, ins: Sequence[Instr]) -> Function:
    """Basic blocks and edges; ``CALL.REL`` targets become subroutine entries, not edges."""
    leaders = {ins[0].addr}
    for k, i in enumerate(ins):
        base = i.op.split(".")[0]
        if base in ("BRA", "BRX", "JMP", "JMX", "EXIT", "RET", "CALL"):
            if k + 1 < len(ins):
                leaders.add(ins[k + 1].addr)
            t = _target(i)
            if t is not None:
                leaders.add(t)
    blocks: Dict[int, Block] = {}
    order = []
    for i in ins:
        if i.addr in leaders:
            blocks[i.addr] = Block(i.addr)
            order.append(i.addr)
        blocks[order[-1]].instrs.append(i)
    for n, start in enumerate(order):
        b = blocks[start]
        last = b.instrs[-1]
        base = last.op.split(".")[0]
        nxt = order[n + 1] if n + 1 < len(order) else None
        t = _target(last)
        conditional = bool(last.pred) and last.pred not in ("@PT",)
        for i in b.instrs:
            if i.op.startswith("CALL") and _target(i) is not None:
                b.calls.append(_target(i))
        if base in ("BRA", "JMP"):
            if t is not None:
                b.succs.append(t)
            if (conditional or ".DIV" in last.op) and nxt is not None:
                b.succs.append(nxt)
        elif base in ("EXIT", "RET"):
            if conditional and nxt is not None:
                b.succs.append(nxt)
        elif base in ("BRX", "JMX"):
            pass  # indirect: no static successors (none in these kernels)
        elif nxt is not None:
            b.succs.append(nxt)
    return Function(name, blocks, ins[0].addr)


@dataclass
class Loop:
    header: int
    body: set
    latches: List[int]
    parent: Optional["Loop"] = None
    children: List["Loop"] = field(default_factory=list)


def find_loops(f: Function, entry: int) -> List[Loop]:
    """Natural loops reachable from ``entry`` (back edges of an iterative DFS), innermost first."""
    color: Dict[int, int] = {}
    back: List[Tuple[int, int]] = []
    stack = [(entry, iter(f.blocks[entry].succs))]
    color[entry] = 1
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            color[node] = 2
            stack.pop()
            continue
        c = color.get(nxt, 0)
        if c == 1:
            back.append((node, nxt))
        elif c == 0:
            color[nxt] = 1
            stack.append((nxt, iter(f.blocks[nxt].succs)))
    preds: Dict[int, List[int]] = {}
    for s, b in f.blocks.items():
        for t in b.succs:
            preds.setdefault(t, []).append(s)
    loops: Dict[int, Loop] = {}
    for u, h in back:
        body = {h}
        work = [u]
        while work:
            n = work.pop()
            if n not in body:
                body.add(n)
                work.extend(preds.get(n, []))
        lp = loops.setdefault(h, Loop(h, set(), []))
        lp.body |= body
        lp.latches.append(u)
    ls = sorted(loops.values(), key=lambda lp: len(lp.body))
    for a in ls:
        for b in ls:
            if b is not a and a.header in b.body and a.body <= b.body and len(b.body) > len(a.body):
                a.parent = b
                b.children.append(a)
                break
    return ls


@dataclass
class PathCost:
    """Instruction counts of one path, and what ranks it (see the module docstring)."""

    ops: Counter = field(default_factory=Counter)  # opcode -> count (fractional for trips / elements)
    store_bytes: float = 0.0
    notes: List[str] = field(default_factory=list)

    @property
    def n(self) -> float:
        return sum(self.ops.values())

    required: int = 0

    def key(self):
        return (-self.store_bytes, -self.required, self.n)

    def plus(self, other: "PathCost", times: float = 1.0) -> "PathCost":
        ops = Counter(self.ops)
        for k, v in other.ops.items():
            ops[k] += v * times
        return PathCost(ops, self.store_bytes + other.store_bytes * times,
                        self.notes + [n for n in other.notes if n not in self.notes], self.required + other.required)


def store_bytes(op: str) -> int:
    if not op.startswith(("STG", "ST.E", "RED", "ATOMG")):
        return 0
    for w, b in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if w in op:
            return b
    return 4


StoreFilter = Callable[[Instr], bool]


def block_cost(f: Function, b: Block, sub_cache: Dict[int, PathCost], keep: Optional[StoreFilter] = None) -> PathCost:
    c = PathCost()
    for i in b.instrs:
        c.ops[i.op] += 1
        if keep is None or keep(i):
            c.store_bytes += store_bytes(i.op)
    for t in b.calls:
        if t not in sub_cache:
            sub_cache[t] = PathCost()  # recursion guard
            sub_cache[t] = _best_path(f, t, set(_reachable(f, t)), None, {}, sub_cache, keep)
        c = c.plus(sub_cache[t])
    return c


def _reachable(f: Function, start: int) -> List[int]:
    seen, work = set(), [start]
    while work:
        n = work.pop()
        if n in seen:
            continue
        seen.add(n)
        work.extend(f.blocks[n].succs)
    return list(seen)


def _best_path(f: Function, start: int, region: set, loop: Optional[Loop], collapsed: Dict[int, Tuple[Loop, PathCost]],
               sub_cache: Dict[int, PathCost], keep: Optional[StoreFilter] = None,
               blocked: Optional[set] = None) -> PathCost:
    """Best path (``PathCost.key``) from ``start`` inside ``region``.

    Inside a loop: to one of its latches (ending the iteration). Outside: to an exit (no
    successor). Nested loops in ``collapsed`` (header -> (loop, cost of all its trips)) are single
    nodes whose successors are the loop's exits.
    """
    owner: Dict[int, int] = {}
    for h, (lp, _) in collapsed.items():
        for n in lp.body:
            if n in region and (n not in owner or len(collapsed[owner[n]][0].body) > len(lp.body)):
                owner[n] = h

    def node(n):
        return owner.get(n, n)

    def succs(n):
        if n in collapsed:
            lp = collapsed[n][0]
            out = {t for m in lp.body for t in f.blocks[m].succs if t not in lp.body}
        else:
            out = {t for t in f.blocks[n].succs if (n, t) not in (blocked or ())}
        return {node(t) for t in out if t in region and not (loop is not None and t == loop.header)}

    def cost(n):
        if n in collapsed:
            return collapsed[n][1]
        return block_cost(f, f.blocks[n], sub_cache, keep)

    def is_end(n):
        if loop is not None:
            return n in loop.latches or (n in collapsed and any(l in collapsed[n][0].body for l in loop.latches))
        return not succs(n)

    memo: Dict[int, Optional[PathCost]] = {}
    # Reverse post-order DP on the DAG (back edges of the current loop were removed by succs()).
    visiting = set()

    def best(n) -> Optional[PathCost]:
        if n in memo:
            return memo[n]
        if n in visiting:  # a cycle not collapsed (irreducible): cut it
            return None
        visiting.add(n)
        here = cost(n)
        options = []
        if is_end(n):
            options.append(here)
        for t in succs(n):
            rest = best(t)
            if rest is not None:
                options.append(here.plus(rest))
        visiting.discard(n)
        memo[n] = min(options, key=PathCost.key) if options else None
        return memo[n]

    r = best(node(start))
    return r if r is not None else PathCost(notes=[f"no complete path from {start:#x}"])


TripFn = Callable[[Loop, PathCost], Tuple[Optional[float], Optional[float], str, bool]]


def _zero_trip_bypasses(f: Function, lp: Loop) -> set:
    """Edges (guard, exit) that skip loop ``lp`` entirely: its zero-trip guards."""
    exits = {t for m in lp.body for t in f.blocks[m].succs if t not in lp.body}
    out = set()
    for s, b in f.blocks.items():
        if s not in lp.body and lp.header in b.succs:
            out |= {(s, t) for t in b.succs if t in exits}
    return out


def hot_path(f: Function, trips: TripFn, keep: Optional[StoreFilter] = None) -> Tuple[PathCost, Optional[Tuple[PathCost, float]], List[str]]:
    """The whole kernel's steady-state path, and the grid-stride loop's iteration if there is one.

    ``trips(loop, iteration_cost)`` returns ``(trip count or None if unknown, elements per
    iteration if this is the grid-stride loop else None, description, required by the case)``. Unknown loops count once
    and are reported. Returns ``(whole-kernel path, (grid-stride iteration, elements) or None,
    descriptions of every loop)``.
    """
    sub_cache: Dict[int, PathCost] = {}
    loops = find_loops(f, f.entry)
    collapsed: Dict[int, Tuple[Loop, PathCost]] = {}
    blocked: set = set()
    described: List[str] = []
    grid_stride: Optional[Tuple[PathCost, float]] = None
    for lp in loops:  # innermost first
        inner = {c.header: collapsed[c.header] for c in lp.children}
        it = _best_path(f, lp.header, lp.body, lp, inner, sub_cache, keep, blocked)
        n, per_iter, desc, required = trips(lp, it)
        if n is None:
            n = 1.0
            it.notes.append(f"loop at {lp.header:#x} has no trip-count rule: counted once")
        elif n > 0:
            blocked |= _zero_trip_bypasses(f, lp)
        total = PathCost().plus(it, n)
        total.required = it.required + (1 if required else 0)
        collapsed[lp.header] = (lp, total)
        described.append(desc)
        if per_iter:
            grid_stride = (it, per_iter)
    top = {lp.header: collapsed[lp.header] for lp in loops if lp.parent is None}
    whole = _best_path(f, f.entry, set(_reachable(f, f.entry)), None, top, sub_cache, keep, blocked)
    return whole, grid_stride, described


def loop_lines(f: Function, lp: Loop) -> List[Tuple[str, int]]:
    """Source locations of a loop's latch branches and header (most specific first)."""
    out: List[Tuple[str, int]] = []
    for start in list(lp.latches) + [lp.header]:
        b = f.blocks[start]
        for i in reversed(b.instrs):
            for loc in i.locs:
                if loc not in out:
                    out.append(loc)
    return out


def loop_markers(f: Function, lp: Loop, prefix: str) -> int:
    """Instructions starting with ``prefix`` in the loop's own blocks (not its nested loops)."""
    nested = set()
    for c in lp.children:
        nested |= c.body
    return sum(1 for n in lp.body - nested for i in f.blocks[n].instrs if i.op.startswith(prefix))


@dataclass
class Resources:
    regs: int
    stack: int
    shared: int
    local: int


def resource_usage(cubin: str) -> Dict[str, Resources]:
    """``cuobjdump -res-usage``: registers, stack frame, static shared and local memory per kernel."""
    text = subprocess.run([find_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    out: Dict[str, Resources] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and name:
            out[name] = Resources(*map(int, m.groups()))
    return out


def spill_bytes(ptxas_log: str) -> Dict[str, Tuple[int, int]]:
    """``ptxas -v`` log -> kernel -> (spill store bytes, spill load bytes)."""
    out: Dict[str, Tuple[int, int]] = {}
    name = None
    for line in ptxas_log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line) or re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            out[name] = (int(m.group(1)), int(m.group(2)))
    return out

"""Instruction classes, H100 SXM pipe rates, and the MODELED throughput bounds.

Everything this module returns is a model, not a measurement: label it MODELED wherever it is
shown. The measured numbers (``make bench`` on a GPU) stay the authority when they exist.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Optional

# H100 SXM5 (the GPU of benchmarks/results/h100_baseline: "NVIDIA H100 80GB HBM3").
SMS = 132  # NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022): 132 SMs on H100 SXM5
CLOCK_HZ = 1.98e9  # max SM clock, read with nvidia-smi in benchmarks/results/h100_baseline/env.txt
ISSUE_PER_SM = 4 * 32  # 4 schedulers per SM, 1 warp-instruction (32 lanes) each per clock (whitepaper)

# Results per clock per SM, compute capability 9.0: CUDA C++ Programming Guide, "Arithmetic
# Instructions", table "Throughput of Native Arithmetic Instructions (Number of Results per Clock
# Cycle per Multiprocessor)". The lanes of each class; an instruction class not listed here is
# bounded by issue alone (uniform-datapath U* instructions, moves, predicates, memory).
PIPES: Dict[str, int] = {
    "fp32": 128,  # 32-bit floating-point add, multiply, multiply-add (FFMA/FMUL/FADD, FMNMX, FSEL, FSETP)
    "imad": 64,  # 32-bit integer multiply, multiply-add, extended-precision multiply-add (IMAD*)
    "int": 64,  # 32-bit integer add/subtract/shift/compare/min/max/bitwise (IADD3, LOP3, SHF, ISETP, ...)
    "mufu": 16,  # reciprocal, rsqrt, log2, exp2, sine, cosine (MUFU.*)
    "conv": 16,  # type conversions (F2F, F2I, I2F, F2FP, I2FP, FRND)
}
SOURCES = {
    "SMs": "132 SMs: NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 SXM5)",
    "clock": "1.98 GHz: max SM clock of the measured H100, nvidia-smi, benchmarks/results/h100_baseline/env.txt",
    "issue": "4 warp schedulers per SM, 1 warp-instruction per scheduler per clock (whitepaper, SM diagram)",
    "pipes": "results/clock/SM for compute capability 9.0, CUDA C++ Programming Guide, table "
             "'Throughput of Native Arithmetic Instructions': FP32 add/mul/FMA 128, 32-bit int "
             "multiply(-add) 64, 32-bit int add/shift/compare/logic 64, MUFU (rcp/rsqrt/lg2/ex2/sin/cos) 16, "
             "type conversions 16",
    "bandwidth": "achievable copy bandwidth: x.clone() measured on this project's H100 "
                 "(benchmarks/results/h100_baseline, provider 'clone (roofline)', largest shape), "
                 "bytes read + written / p50 time",
}

# Occupancy limits of compute capability 9.0: CUDA C++ Programming Guide, table "Technical
# Specifications per Compute Capability" (64K 32-bit registers, 64 resident warps, 32 resident
# blocks per SM) and the CUDA occupancy calculator's register allocation (per warp, in units of
# 256 registers).
REGS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
REG_ALLOC_UNIT = 256
SOURCES["occupancy"] = ("resident warps per SM from registers per thread and threads per block: 65,536 "
                        "registers, 64 warps, 32 blocks per SM (CUDA C++ Programming Guide, compute capability "
                        "9.0), registers allocated per warp in units of 256 (CUDA occupancy calculator); "
                        "static shared memory only (the CUDA blur's dynamic tile is not counted)")


def resident_warps(regs: int, threads_per_block: int, shared_bytes: int = 0, smem_per_sm: int = 228 * 1024) -> int:
    """Warps per SM that fit at ``regs`` registers per thread (the occupancy numerator; 64 = full)."""
    wpb = -(-threads_per_block // 32)
    per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    blocks = min(REGS_PER_SM // (per_warp * wpb), MAX_BLOCKS_PER_SM, MAX_WARPS_PER_SM // wpb)
    if shared_bytes:
        blocks = min(blocks, smem_per_sm // shared_bytes)
    return blocks * wpb


CLASSES = ["IMAD", "LOP3", "IADD3", "FFMA", "FMUL/FADD", "MUFU", "CONV", "LDG", "STG", "BRANCH", "OTHER"]
_CONV = ("F2F", "F2I", "I2F", "F2FP", "I2FP", "FRND")
_BRANCH = ("BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BSSY", "BSYNC", "WARPSYNC")
_FP32 = ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "FCHK", "FSWZADD")
_INT = ("IADD3", "VIADD", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "ISETP", "IMNMX", "VIMNMX", "LEA", "SEL",
        "IABS", "PRMT", "BMSK", "SGXT", "FLO", "POPC", "BREV", "IDP")


def op_class(op: str) -> str:
    base = op.split(".")[0]
    if base == "IMAD":
        return "IMAD"
    if base in ("LOP3", "LOP"):
        return "LOP3"
    if base in ("IADD3", "VIADD", "IADD"):
        return "IADD3"
    if base == "FFMA":
        return "FFMA"
    if base in ("FMUL", "FADD"):
        return "FMUL/FADD"
    if base == "MUFU":
        return "MUFU"
    if base in _CONV:
        return "CONV"
    if base in ("LDG", "LD"):
        return "LDG"
    if base in ("STG", "ST"):
        return "STG"
    if base in _BRANCH:
        return "BRANCH"
    return "OTHER"


def op_pipe(op: str) -> Optional[str]:
    base = op.split(".")[0]
    if base in _FP32:
        return "fp32"
    if base == "IMAD":
        return "imad"
    if base in _INT:
        return "int"
    if base == "MUFU":
        return "mufu"
    if base in _CONV:
        return "conv"
    return None


def classify(ops: Counter) -> Dict[str, float]:
    out = {c: 0.0 for c in CLASSES}
    for op, n in ops.items():
        out[op_class(op)] += n
    return out


def pipe_counts(ops: Counter) -> Dict[str, float]:
    out = {p: 0.0 for p in PIPES}
    for op, n in ops.items():
        p = op_pipe(op)
        if p:
            out[p] += n
    return out


def copy_bandwidth(csv_path: str) -> Dict[str, float]:
    """Achievable copy bandwidth (bytes/s) from the measured clone rows, largest float32 shape."""
    best = None
    with open(csv_path) as f:
        for r in csv.DictReader(f):
            if r["provider"] != "clone (roofline)" or r["metric"] != "time" or r["dtype"] != "float32":
                continue
            numel = 1
            for s in r["shape"].split("x"):
                numel *= int(s)
            if best is None or numel > best[0]:
                best = (numel, float(r["p50"]) * 1e-3, r["shape"], r["device"])
    if best is None:
        raise ValueError(f"{csv_path} has no 'clone (roofline)' float32 time rows")
    numel, t, shape, device = best
    return {"bytes_per_s": 2 * 4 * numel / t, "shape": shape, "time_s": t, "device": device}


@dataclass
class Bounds:
    """MODELED elements/s of one kernel on an H100 SXM, per bound, and the one that wins."""

    issue: float
    pipes: Dict[str, float]
    memory: float
    winner: str
    rate: float


def bounds(ops_per_elem: Counter, bytes_per_elem: float, bandwidth: float) -> Bounds:
    n = sum(ops_per_elem.values())
    issue = SMS * CLOCK_HZ * ISSUE_PER_SM / n if n else float("inf")
    pipes = {}
    for p, c in pipe_counts(ops_per_elem).items():
        pipes[p] = SMS * CLOCK_HZ * PIPES[p] / c if c else float("inf")
    memory = bandwidth / bytes_per_elem if bytes_per_elem else float("inf")
    cands = {"issue": issue, "memory": memory, **{f"pipe:{k}": v for k, v in pipes.items()}}
    winner = min(cands, key=cands.get)
    return Bounds(issue, pipes, memory, winner, cands[winner])


def default_baseline_csv(root: str) -> str:
    return os.path.join(root, "benchmarks", "results", "h100_baseline", "mollify_nvidia_h100_80gb_hbm3.csv")

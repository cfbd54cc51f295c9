"""sm_90 cubins of every kernel variant, with no GPU.

Triton: the backend's own launch plan (``mollify_triton._plan``) gives the kernel, grid, runtime
arguments, constexprs and options of a real call on realistic CPU tensors (PyTorch's CPU
allocations are 64-byte aligned, CUDA's 256-byte: both divisible by 16, so the alignment hints
match). Those arguments go through Triton's own binder (``create_function_from_signature`` +
``JITFunction._pack_args``, the code ``JITFunction.run`` runs before compiling, same in Triton
3.6 to 3.8), so the signature, constexprs and divisibility attributes are exactly a launch's.

CUDA: ``nvcc -cubin`` for sm_90 with the compile options, include directories and C++ standard
read from the project's CMakeLists.txt. Kernels are found in the cubin and their template
arguments decoded from the mangled names.

Compiled cubins are cached by content hash under ``~/.cache/mollify_fast/sass`` (or
``$MOLLIFY_FAST_SASS_CACHE``); Triton also keeps its own cache.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .disasm import find_tool, spill_bytes

ARCH = 90


def cache_dir() -> str:
    d = os.environ.get("MOLLIFY_FAST_SASS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mollify_fast", "sass")
    os.makedirs(d, exist_ok=True)
    return d


@dataclass
class Compiled:
    """One compiled kernel: the cubin on disk, its kernel symbol, and ptxas's spill report."""

    cubin: str
    symbol: str
    spills: Tuple[int, int]  # (spill store bytes, spill load bytes) from ptxas -v
    info: Dict[str, object] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- Triton
def _triton_target(arch: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", arch, 32)


def triton_compile(fn, args, kwargs, arch: int = ARCH) -> Compiled:
    """Compile ``fn[grid](*args, **kwargs)`` for ``sm_<arch>`` as ``JITFunction.run`` would, no GPU."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = _triton_target(arch)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(kwargs)
    kwargs.setdefault("debug", False)
    bound, spec, opts = binder(*args, **kwargs)
    kw = {k: v for k, v in kwargs.items() if k != "debug"}
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    key = hashlib.sha256(repr((fn.cache_key, signature, sorted(map(repr, constexprs.items())),
                                sorted(map(repr, attrs.items())), sorted(map(repr, options.__dict__.items())),
                                triton.__version__, arch)).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir(), f"triton-{fn.__name__}-{key}.cubin")
    log_path = path + ".ptxas"
    if not (os.path.exists(path) and os.path.exists(log_path)):
        src = ASTSource(fn, signature, constexprs, attrs)
        cc = triton.compile(src, target=target, options=options.__dict__)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(cc.asm["ptx"])
        # ptxas -v on Triton's own PTX (the same ptxas Triton runs) for the spill report.
        r = subprocess.run([find_tool("ptxas"), "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}{'a' if arch >= 90 else ''}", f.name,
                            "-o", os.devnull], capture_output=True, text=True)
        os.unlink(f.name)
        with open(path + ".tmp", "wb") as out:
            out.write(cc.asm["cubin"])
        os.replace(path + ".tmp", path)
        with open(log_path, "w") as out:
            out.write(r.stderr + r.stdout)
    with open(log_path) as f:
        spills = spill_bytes(f.read())
    sig = {k: v for k, v in signature.items() if v != "constexpr"}
    hints = {str(k): v for k, v in attrs.items()}
    sym = fn.__name__
    return Compiled(path, sym, next(iter(spills.values()), (0, 0)),
                    {"signature": sig, "attrs": hints, "num_warps": options.num_warps})


# ------------------------------------------------------------------------------------- CUDA
def cmake_cuda_flags(cmakelists: str) -> Tuple[List[str], List[str], str]:
    """(compile options, include dirs, C++ standard) of the CUDA sources, from CMakeLists.txt."""
    text = open(cmakelists).read()
    opts: List[str] = []
    for m in re.finditer(r"\$<\$<COMPILE_LANGUAGE:CUDA>:([^>]*)>", text):
        opts += m.group(1).split()
    incs: List[str] = []
    for m in re.finditer(r"target_include_directories\(\s*\w+\s+PRIVATE\s+([^)]*)\)", text):
        incs += m.group(1).split()
    std = re.search(r"CMAKE_CUDA_STANDARD\s+(\d+)", text)
    if not opts or not incs:
        raise ValueError(f"could not read the CUDA compile options / include dirs from {cmakelists}")
    return opts, incs, f"c++{std.group(1) if std else '17'}"


def cuda_compile(source: str, root: str, include_root: Optional[str] = None) -> Tuple[str, Dict[str, Tuple[int, int]], List[str]]:
    """nvcc -cubin for sm_90 with the project's flags; returns (cubin, spills per kernel, flags)."""
    opts, incs, std = cmake_cuda_flags(os.path.join(root, "CMakeLists.txt"))
    inc_root = include_root or root
    flags = [*opts, f"-std={std}", *[f"-I{os.path.join(inc_root, i)}" for i in incs]]
    h = hashlib.sha256()
    h.update(" ".join(flags).encode())
    h.update(open(source, "rb").read())
    for i in incs:
        d = os.path.join(inc_root, i)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if name.endswith((".h", ".cuh", ".hpp")):
                h.update(name.encode())
                h.update(open(os.path.join(d, name), "rb").read())
    nvcc = os.environ.get("NVCC", "nvcc")
    h.update(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.encode())
    path = os.path.join(cache_dir(), f"cuda-{h.hexdigest()[:24]}.cubin")
    if not os.path.exists(path) or not os.path.exists(path + ".ptxas"):
        cmd = [nvcc, "-cubin", f"-arch=sm_{ARCH}", *flags, "-Xptxas", "-v", source, "-o", path + ".tmp"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
        os.replace(path + ".tmp", path)
        with open(path + ".ptxas", "w") as f:
            f.write(r.stderr + r.stdout)
    return path, spill_bytes(open(path + ".ptxas").read()), flags


_BUILTIN = {"f": "float32", "d": "float64", "i": "int", "b": "bool", "l": "long", "j": "unsigned", "h": "uint8"}
_DTYPES = {"float": "float32", "Half": "float16", "BF16": "bfloat16", "half": "float16", "__half": "float16",
           "__nv_bfloat16": "bfloat16", "double": "float64"}


def demangle_kernel(sym: str) -> Optional[Tuple[str, List[str]]]:
    """``_ZN...20mollify_noise_kernelIfLb1EEEv...`` -> ("mollify_noise_kernel", ["float32", "1"]).

    Enough of the Itanium mangling for kernels templated on types and integral values (what
    ``cu++filt`` would print, without needing it).
    """
    m = re.match(r"_ZN(.*)$", sym)
    if not m:
        return None
    s = m.group(1)
    pos, name = 0, None
    while pos < len(s) and s[pos].isdigit():
        n = re.match(r"\d+", s[pos:]).group(0)
        pos += len(n)
        name = s[pos:pos + int(n)]
        pos += int(n)
    if name is None:
        return None
    args: List[str] = []
    if pos < len(s) and s[pos] == "I":
        pos += 1
        while pos < len(s) and s[pos] != "E":
            c = s[pos]
            if c == "L":  # literal: L<type><value>E
                mm = re.match(r"L([a-z])(n?\d+)E", s[pos:])
                args.append(mm.group(2).replace("n", "-"))
                pos += len(mm.group(0))
            elif c == "N":  # nested name: NS_4HalfE or N12mollify_fast4HalfE
                mm = re.match(r"N(?:S\d*_|\d+\w+?(?=\d))?(\d+)", s[pos:])
                ln = int(mm.group(1))
                start = pos + len(mm.group(0))
                args.append(_DTYPES.get(s[start:start + ln], s[start:start + ln]))
                pos = s.index("E", start + ln) + 1
            elif c == "S":  # substitution S_ / S<seq>_: a type named before (ours: a repeated T)
                mm = re.match(r"S[0-9A-Z]*_", s[pos:])
                args.append(next((a for a in reversed(args) if a in _DTYPES.values()), "?"))
                pos += len(mm.group(0)) if mm else 1
            elif c in _BUILTIN:
                args.append(_DTYPES.get({"f": "float", "d": "double"}.get(c, c), _BUILTIN[c]))
                pos += 1
            elif c.isdigit():
                n = re.match(r"\d+", s[pos:]).group(0)
                ln = int(n)
                args.append(_DTYPES.get(s[pos + len(n):pos + len(n) + ln], s[pos + len(n):pos + len(n) + ln]))
                pos += len(n) + ln
            else:
                args.append("?")
                pos += 1
    return name, args


def template_params(source_text: str, kernel: str) -> List[str]:
    """Template parameter names of ``__global__ ... kernel`` in the source (``T``, ``kContiguous``)."""
    m = re.search(r"template\s*<([^>]*)>\s*__global__\s+(?:__launch_bounds__\((?:[^()]|\([^()]*\))*\)\s*)?void\s+(?:__launch_bounds__\((?:[^()]|\([^()]*\))*\)\s*)?" + re.escape(kernel)
                  + r"\b", source_text)
    if not m:
        return []
    return [p.split()[-1].split("=")[0] for p in m.group(1).split(",")]

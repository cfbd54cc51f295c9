"""``python -m mollify_fast info``: versions, devices, and each backend's availability."""
from __future__ import annotations

import argparse
import platform
import sys
import warnings

# The versions the test suite runs against (README, "Backends and the build"); others are
# marked "untested" (they may well work).
TESTED = {"torch": ((2, 11), (2, 14)), "triton": ((3, 6), (3, 8))}


def version_note(package: str, version: str) -> str:
    """``""`` for a version inside the tested range of ``package``, else ``" (untested: ...)"``."""
    lo, hi = TESTED[package]
    try:
        major_minor = tuple(int(p) for p in version.split("+")[0].split(".")[:2])
    except ValueError:
        return f" (untested: tested with {package} {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]})"
    if lo <= major_minor <= hi:
        return ""
    return f" (untested: tested with {package} {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]})"


def _extension_lines() -> list:
    from mollify_fast.backends._native import build_status, extension

    with warnings.catch_warnings():  # the reason is printed below instead
        warnings.simplefilter("ignore")
        ext, why = extension()
    st = build_status()
    built = f" (build: {st.get('reason')})" if st else ""
    if ext is None:
        return [f"extension    unavailable: {why}"]
    isas = ", ".join(ext.cpu_isas_compiled())
    return [
        f"extension    {ext.__file__}{built}",
        f"cpu kernels  {ext.cpu_isa()} (compiled: {isas}; baseline -march={ext.cpu_baseline_arch or 'compiler default'}; "
        f"this CPU runs: {', '.join(ext.cpu_isas())}; MOLLIFY_FAST_CPU_ISA forces one)",
    ]


def info() -> str:
    import torch

    import mollify_fast
    from mollify_fast.backends import auto_table

    lines = [
        f"mollify_fast {mollify_fast.__version__}",
        f"python       {platform.python_version()} ({sys.platform}, {platform.machine()})",
        f"torch        {torch.__version__}{version_note('torch', torch.__version__)} "
        f"(CUDA build: {torch.version.cuda or 'no'})",
    ]
    try:
        import triton

        lines.append(f"triton       {triton.__version__}{version_note('triton', triton.__version__)}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"triton       not importable ({type(e).__name__}: {e})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i}       {torch.cuda.get_device_name(i)}")
    else:
        lines.append("cuda         no GPU visible to torch")
    lines += _extension_lines()
    lines.append("backends:")
    for name, (ok, why) in mollify_fast.available_backends().items():
        lines.append(f"  {name:<10} {'available' if ok else 'unavailable'}: {why}")
    table = auto_table()
    lines.append(f"auto order ({table.get('source', '?')}):")
    for dev, ops in table.get("devices", {}).items():
        for op, order in ops.items():
            lines.append(f"  {dev:<5} {op:<6} {' > '.join(order)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mollify_fast", description=__doc__)
    parser.add_argument("command", choices=["info"], help="what to do")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m mollify_fast info``: versions, devices, and each backend's availability."""
from __future__ import annotations

import argparse
import platform
import sys


def info() -> str:
    import torch

    import mollify_fast
    from mollify_fast.backends import auto_table

    lines = [
        f"mollify_fast {mollify_fast.__version__}",
        f"python       {platform.python_version()} ({sys.platform}, {platform.machine()})",
        f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
    ]
    try:
        import triton

        lines.append(f"triton       {triton.__version__}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"triton       not importable ({type(e).__name__}: {e})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i}       {torch.cuda.get_device_name(i)}")
    else:
        lines.append("cuda         no GPU visible to torch")
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

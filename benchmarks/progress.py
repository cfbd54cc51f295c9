"""Progress that shows where people and CI read it.

On a terminal: a tqdm bar. Piped or in a CI log (tqdm's ``disable=None`` hides itself there, so a
long job printed nothing for minutes): one line per item on stderr, with the item, its index and
the elapsed time, flushed at once.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, unit: str = "case", total: Optional[int] = None,
             label=None) -> Iterator[T]:
    """Yield ``items`` while reporting progress (see the module docstring).

    ``label(item) -> str`` names an item in the per-line form (default ``str(item)``).
    """
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, desc=desc, unit=unit, total=n, disable=False, mininterval=0.5)
            return
    t0 = time.perf_counter()
    for i, item in enumerate(items, 1):
        name = label(item) if label is not None else str(item)
        name = f": {name}" if name else ""
        print(f"[{desc}] {unit} {i}/{n}{name} (elapsed {time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        yield item
    print(f"[{desc}] done: {n} {unit}(s) in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

"""Memory checks made from headers and shapes, before anything large is allocated.

Kept free of torch so that the scan reader can use it cheaply.
"""

from __future__ import annotations

import os

GIB = 1 << 30
SHARE = 0.8  # of the memory free now, what one array (or a checkpoint's tensors) may take


def free_memory() -> int | None:
    """Bytes of host memory available now (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    """Bytes for a sentence: '13.8 GiB' (MiB under a tenth of a GiB, TiB over 1024 GiB)."""
    if n >= 1024 * GIB:
        return f"{n / (1024 * GIB):,.1f} TiB"
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def fits(needed: float) -> tuple[bool, int | None]:
    """Whether ``needed`` bytes fit in the memory free now (and how much that is)."""
    free = free_memory()
    return (free is None or needed <= SHARE * free), free


def refuse_over(needed: float, what: str, fix: str, error: type[ValueError]) -> None:
    """Raise ``error`` with one sentence when ``needed`` bytes do not fit in free memory."""
    ok, free = fits(needed)
    if not ok:
        raise error(f"{what} needs about {gib(needed)} of memory, but only {gib(free)} is free; {fix}")

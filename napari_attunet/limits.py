"""Memory checks made from headers and shapes, before anything large is allocated.

The memory this process may still take is the least of what the machine has available
(MemAvailable), what its cgroup allows (``memory.max`` less ``memory.current``, or v1's
``memory.limit_in_bytes`` less ``memory.usage_in_bytes``: containers, SLURM jobs) and what its
address-space and data limits leave (``ulimit -v``: RLIMIT_AS less VmSize, RLIMIT_DATA less
VmData). Free memory alone lets a job under a limit reach the allocator, whose errors name
nothing.

Kept free of torch so that the scan reader can use it cheaply.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

GIB = 1 << 30
SHARE = 0.8  # of the memory free now, what one array (or a checkpoint's tensors) may take
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63
MACHINE = "free on this machine"
CGROUP = "left under this process's cgroup memory limit"
ADDRESS_SPACE = "left under this process's address-space limit (ulimit -v)"
DATA = "left under this process's data-size limit (ulimit -d)"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None  # "max": no limit


def _machine_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def _cgroup_folders() -> tuple[tuple[Path, str, str], ...]:
    """(folder, limit file, usage file) of this process's memory cgroup and its ancestors, v2
    then v1, from /proc/self/cgroup and where the hierarchies are mounted."""
    mounts: dict[str, tuple[Path, str]] = {}  # "v2" / "v1" -> (mount point, root in hierarchy)
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                dash = fields.index("-")
                kind, options = fields[dash + 1], fields[-1].split(",")
                if kind == "cgroup2":
                    mounts.setdefault("v2", (Path(fields[4]), fields[3]))
                elif kind == "cgroup" and "memory" in options:
                    mounts.setdefault("v1", (Path(fields[4]), fields[3]))
        with open("/proc/self/cgroup") as fh:
            lines = [line.rstrip("\n").split(":", 2) for line in fh]
    except (OSError, ValueError, IndexError):
        return ()
    found = []
    for version, limit, usage in (
        ("v2", "memory.max", "memory.current"),
        ("v1", "memory.limit_in_bytes", "memory.usage_in_bytes"),
    ):
        if version not in mounts:
            continue
        point, root = mounts[version]
        wanted = "" if version == "v2" else "memory"
        path = next((p for _, c, p in lines if (c == wanted or wanted in c.split(","))), None)
        if path is None:
            continue
        relative = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
        folder = (point / relative).resolve() if relative != "." else point
        if not folder.is_dir():
            folder = point  # a cgroup namespace: the mount shows this process's own cgroup
        while True:
            found.append((folder, limit, usage))
            if folder == point or point not in folder.parents:
                break
            folder = folder.parent
    return tuple(found)


def _cgroup_headroom() -> int | None:
    least = None
    for folder, limit_name, usage_name in _cgroup_folders():
        limit = _number(_read(folder / limit_name))
        usage = _number(_read(folder / usage_name))
        if limit is None or usage is None or limit >= _NO_LIMIT:
            continue
        room = max(limit - usage, 0)
        least = room if least is None else min(least, room)
    return least


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rlimit_headroom(which: str, field: str) -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(getattr(resource, which))
    if soft == resource.RLIM_INFINITY:
        return None
    used = _status_bytes(field)
    return None if used is None else max(soft - used, 0)


def memory_headroom() -> list[tuple[int, str]]:
    """Every known bound on the bytes this process may still allocate, with what it is."""
    bounds = [
        (_machine_available(), MACHINE),
        (_cgroup_headroom(), CGROUP),
        (_rlimit_headroom("RLIMIT_AS", "VmSize"), ADDRESS_SPACE),
        (_rlimit_headroom("RLIMIT_DATA", "VmData"), DATA),
    ]
    return [(n, what) for n, what in bounds if n is not None]


def free_memory() -> int | None:
    """Bytes of host memory this process may allocate now (the least bound), or None."""
    bounds = memory_headroom()
    return min(n for n, _ in bounds) if bounds else None


def binding_limit() -> str:
    """What the least bound is, for a sentence: 'free on this machine', 'left under ...'."""
    bounds = memory_headroom()
    return min(bounds)[1] if bounds else MACHINE


def gib(n: float) -> str:
    """Bytes for a sentence: '13.8 GiB' (MiB under a tenth of a GiB, TiB over 1024 GiB)."""
    if n >= 1024 * GIB:
        return f"{n / (1024 * GIB):,.1f} TiB"
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def fits(needed: float) -> tuple[bool, int | None]:
    """Whether ``needed`` bytes fit in the memory free now (and how much that is)."""
    free = free_memory()
    return (free is None or needed <= SHARE * free), free


def free_text(free: int | None) -> str:
    """'2.1 GiB of memory free on this machine', or '... left under ... limit (ulimit -v)'."""
    return f"{gib(free or 0)} of memory {binding_limit()}"


def refuse_over(needed: float, what: str, fix: str, error: type[ValueError]) -> None:
    """Raise ``error`` with one sentence when ``needed`` bytes do not fit in free memory."""
    ok, free = fits(needed)
    if not ok:
        raise error(
            f"{what} needs about {gib(needed)} of memory, but only {gib(free or 0)} is "
            f"{binding_limit()}; {fix}"
        )

"""What the bench scripts share: the machine named beside every figure, timing (best of,
wall and CPU, interleaved rounds) and the small random network they run.

Every bench prints ``machine()`` first: the CPU, its capability and cores, and the load
average, since other processes share the machine and every figure is read against them.
Scripts run as ``python bench/NAME.py``, so this folder is on ``sys.path``; ``ROOT`` (the
checkout) is put first, so that its package is the one measured.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def cpu_name() -> str:
    """The CPU's model name, what torch dispatches to (or its vector flags without torch), and
    the cores this process may use."""
    name, flags = platform.processor() or platform.machine() or "unknown CPU", ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name") and ":" in line:
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and ":" in line and not flags:
            present = set(line.split(":", 1)[1].split())
            flags = ", ".join(f for f in FLAGS if f in present)
    try:
        import torch

        caps = f"torch {torch.backends.cpu.get_cpu_capability()}"
    except ImportError:
        caps = flags or "?"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({caps}; {flags or 'no AVX flags'}), {cores} cores"


def load() -> str:
    """The load average over 1, 5 and 15 minutes, as ``uptime`` prints it."""
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def machine() -> str:
    """The line every bench prints before its figures."""
    return f"CPU: {cpu_name()}; {load()} (the machine is shared: figures are ratios of interleaved runs)"


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """(what ``fn(*args)`` returns, wall seconds, CPU seconds of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """The shortest of ``repeats`` wall times of ``fn()``."""
    return min(timed(fn)[1] for _ in range(max(1, repeats)))


def interleaved(
    calls: Mapping[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Each call once per round, in turn, for ``repeats`` rounds, so that a load that comes and
    goes falls on all of them alike: (wall seconds per name, the last result per name)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    results: dict[str, Any] = {}
    for _ in range(max(1, repeats)):
        for name, call in calls.items():
            results[name], wall, _ = timed(call)
            times[name].append(wall)
    return times, results


def official_network(features=(4, 8, 16, 32, 64), seed: int = 0, out_channels: int = 2):
    """A random official 3D Attention U-Net (single attention, deep supervision), seeded, in
    eval mode, arrays in scan order."""
    import torch

    from napari_attunet.models import ModelSpec, build
    from napari_attunet.models.official import official_strides

    torch.manual_seed(seed)
    spec = ModelSpec(
        family="official",
        variant="single_att_dsv",
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        features=tuple(features),
        output="softmax",
        strides=official_strides("single_att_dsv", 3),
        kernel_size=(3,) * 3,
        attention_dsample=(2,) * 3,
        axes="zyx",
    )
    return build(spec).eval()


def seconds_per_tile(nets: Mapping, batch, repeats: int) -> dict:
    """Best seconds per tile of each compiled OpenVINO network (by key) on ``batch``, run in
    groups of the requests its hint asks for, in interleaved rounds after one warm-up."""
    times: dict = {key: [] for key in nets}
    for _ in range(repeats + 1):
        for key, net in nets.items():
            t = time.perf_counter()
            for i in range(0, len(batch), net.parallel):
                net.forward_with_attention(batch[i : i + net.parallel])
            times[key].append((time.perf_counter() - t) / len(batch))
    return {key: min(ts[1:]) for key, ts in times.items()}

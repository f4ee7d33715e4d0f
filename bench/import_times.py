"""How long importing the plugin's light modules takes, and whether torch or Qt come along.

Each import runs in a fresh interpreter (so nothing is cached in the process); the figure is
the median of several runs. Run it against this checkout or an older one via PYTHONPATH:

    python bench/import_times.py [repeats]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

MODULES = (
    "napari_attunet",
    "napari_attunet.scans.io",
    "napari_attunet.plugin.reader",
    "napari_attunet.plugin.writer",
    "napari_attunet.plugin.samples",
)
HEAVY = ("torch", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari")

_PROBE = """
import json, sys, time
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
print(json.dumps({{"s": elapsed, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def measure(module: str, repeats: int) -> tuple[float, list[str]]:
    times, heavy = [], []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", _PROBE.format(module=module, heavy=HEAVY)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        times.append(result["s"])
        heavy = result["heavy"]
    return statistics.median(times), heavy


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    baseline, _ = measure("numpy", repeats)
    print(f"numpy alone: {baseline:.3f} s (median of {repeats})")
    for module in MODULES:
        seconds, heavy = measure(module, repeats)
        print(f"{module:32s} {seconds:6.3f} s   also imports: {', '.join(heavy) or '-'}")


if __name__ == "__main__":
    main()

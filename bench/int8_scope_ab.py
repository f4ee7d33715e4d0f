"""int8 with every layer quantized against int8 with the attention blocks in fp32, and OpenVINO
fp32 and bf16: five interleaved rounds on the bench network (96x160x192, tile 96, overlap 0.25).

    python bench/int8_scope_ab.py [WEIGHTS]   # default: bench/.cache/monai_phantom.pth
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import napari_attunet as na  # noqa: E402
from napari_attunet.inference.quantize import SCOPE_ENV  # noqa: E402
from napari_attunet.phantom import make_phantom  # noqa: E402

ROWS = ("all", "keep-attention", "fp32", "bf16")


def runner(weights: str, image: np.ndarray, row: str):
    model = na.load_model(weights)  # one object per row: each keeps its compiled network
    options = dict(normalization="none", tile=96, overlap=0.25, orientation="native")

    def run():
        if row in ("fp32", "bf16"):
            return na.predict(image, model, precision=row, runtime="openvino", **options)
        os.environ[SCOPE_ENV] = row
        try:
            return na.predict(image, model, precision="int8", **options)
        finally:
            os.environ.pop(SCOPE_ENV)

    return run


def main() -> None:
    warnings.simplefilter("ignore")
    weights = sys.argv[1] if len(sys.argv) > 1 else "bench/.cache/monai_phantom.pth"
    image, _ = make_phantom((96, 160, 192), seed=7)
    rows = {row: runner(weights, image, row) for row in ROWS}
    for run in rows.values():  # conversion and calibration first
        run()
    times: dict[str, list[float]] = {row: [] for row in rows}
    for _ in range(5):
        for row, run in rows.items():
            t = time.perf_counter()
            run()
            times[row].append(time.perf_counter() - t)
    print("load", " ".join(open("/proc/loadavg").read().split()[:3]))
    fp32 = np.array(times["fp32"])
    for row, ts in times.items():
        ratio = float(np.median(fp32 / np.array(ts)))
        print(f"{row:16s} median {np.median(ts):.2f} s, min {min(ts):.2f} s, {ratio:.2f}x OpenVINO fp32")


if __name__ == "__main__":
    main()

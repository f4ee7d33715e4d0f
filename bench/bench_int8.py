"""int8 against fp32 on a trained network and a real scan: the bundled MNI152 demo (an Oktay
Attention U-Net for grey and white matter, 3D) on the MNI152 T1 at 2 mm.

    python bench/bench_int8.py [--repeats 3]

Interleaved runs in one process: PyTorch fp32, OpenVINO fp32, and OpenVINO int8 with every
layer quantized and with the attention blocks kept in fp32. Prints the CPU, seconds and ratios
to PyTorch fp32 (best of the repeats), per-class Dice against PyTorch fp32, each gate's mean
|d| against fp32, the guard's note, and the first int8 run with an empty cache against one from
the cache. Figures, not pass/fail: the machine is shared, so say its load with them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import napari_attunet as na  # noqa: E402
from napari_attunet.demo_data import DEMO_CHECKPOINT  # noqa: E402
from napari_attunet.inference.quantize import SCOPE_ENV, SCOPES  # noqa: E402
from napari_attunet.inference.runtime_openvino import CACHE_ENV  # noqa: E402

SCAN = Path(na.__file__).parent / "data" / "mni152_t1_2mm.nii.gz"


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def gate_diffs(pred, ref) -> list[float]:
    return [
        float(np.abs(a.data.astype(np.float32) - b.data.astype(np.float32)).mean())
        for a, b in zip(pred.gates, ref.gates, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from napari_attunet.scans import io

    volume = io.read(SCAN)
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    flags = open("/proc/cpuinfo").read()
    caps = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8") if f in flags
    ]
    model_name = next(line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line)
    print(f"CPU: {model_name}, {os.cpu_count()} cores, {' '.join(caps)}; load {' '.join(load)}")
    print(f"scan {SCAN.name} {volume.array.shape}, checkpoint {DEMO_CHECKPOINT.name}\n")

    def run(runtime: str, precision: str, scope: str | None = None):
        model = na.load_model(DEMO_CHECKPOINT)  # one object per row: each keeps its network

        def call():
            if scope:
                os.environ[SCOPE_ENV] = scope
            try:
                return na.predict(volume, model, runtime=runtime, precision=precision, device="cpu")
            finally:
                os.environ.pop(SCOPE_ENV, None)

        return call

    rows = {"torch fp32": run("torch", "fp32"), "openvino fp32": run("openvino", "fp32")}
    rows.update({f"openvino int8 ({s})": run("openvino", "int8", s) for s in SCOPES})
    for call in rows.values():  # warm-up: conversion, calibration
        call()
    times: dict[str, list[float]] = {k: [] for k in rows}
    outputs = {}
    for _ in range(args.repeats):
        for key, call in rows.items():
            t = time.perf_counter()
            outputs[key] = call()
            times[key].append(time.perf_counter() - t)
    ref = outputs["torch fp32"]
    ref_labels = ref.labels()
    base = min(times["torch fp32"])
    print(f"{'run':32s} {'s':>6s} {'x torch fp32':>12s}  Dice vs torch fp32 (bg, GM, WM)  gates' mean |d|")
    for key in rows:
        best = min(times[key])
        labels = outputs[key].labels()
        dices = ", ".join(f"{dice(labels, ref_labels, c):.4f}" for c in (0, 1, 2))
        diffs = ", ".join(f"{d:.4f}" for d in gate_diffs(outputs[key], ref))
        print(f"{key:32s} {best:6.2f} {base / best:11.2f}x  {dices}  {diffs}")
    for key in rows:
        for note in outputs[key].notes:
            if "Dice per class" in note:
                print(f"  {key} guard: {note}")

    before = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        seconds = []
        for _ in range(2):
            t = time.perf_counter()
            run("openvino", "int8")()
            seconds.append(time.perf_counter() - t)
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before
    print(
        f"\nint8, empty cache (conversion + calibration + run): {seconds[0]:.1f} s; from the cache "
        f"(read + compile + run): {seconds[1]:.1f} s; load now {open('/proc/loadavg').read().split()[0]}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()

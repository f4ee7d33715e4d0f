"""Tile size as a speed lever: na.predict on the bench phantom with tiles of 96 (the bench's
and MONAI's roi), 128, 160 and the whole volume, at the same overlap, with the bench's MONAI
AttentionUnet (``bench_predict.py`` trains it once and caches it in bench/.cache).

    python bench/bench_tiles.py [--tiles 96 128 160 0] [--precisions auto] [--repeats 3]

A tile of 0 is the whole volume as one tile. Larger tiles repeat less work at the overlaps,
but a network sees more context per tile and fewer blended seams, so its labels change. This
prints, per precision and tile: the windows and the voxels the network computes (relative to
the volume), seconds (best of the interleaved repeats) and the median per-round ratio to tile
96, and per-class Dice against the phantom's TRUTH as well as against the tile-96 run. Figures,
not pass/fail: the machine is shared, so the load is printed before and after.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_predict import cpu_description, dice, monai_net, train  # noqa: E402
from common import load, seconds_per_tile  # noqa: E402

import napari_attunet as na  # noqa: E402
from napari_attunet.inference import quantize  # noqa: E402
from napari_attunet.inference.tiling import window_grid  # noqa: E402
from napari_attunet.phantom import make_phantom  # noqa: E402


def tile_for(size: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The network's tile: ``size`` on every axis, or the whole volume for 0. The network sees
    napari's (z, y, x) reordered to (x, y, z) (orientation 'native')."""
    return tuple(shape[::-1]) if size == 0 else (size,) * 3


def work(shape_xyz: tuple[int, ...], tile: tuple[int, ...], overlap: float) -> tuple[int, float]:
    """(windows, voxels the network computes / the volume's voxels)."""
    clipped = tuple(min(t, n) for t, n in zip(tile, shape_xyz, strict=True))
    windows = len(window_grid(shape_xyz, clipped, (8, 8, 8), overlap))
    return windows, windows * float(np.prod(clipped)) / float(np.prod(shape_xyz))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 160, 192), help="napari (z, y, x)")
    parser.add_argument("--tiles", type=int, nargs="+", default=(96, 128, 160, 0), help="0: the whole volume")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument(
        "--precisions", nargs="+", default=("auto",),
        help="auto, fp32, bf16, int8, int8-throughput (int8 with OpenVINO's THROUGHPUT hint)",
    )  # fmt: skip
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds after a warm-up")
    parser.add_argument("--train-steps", type=int, default=300, help="as bench_predict.py")
    parser.add_argument("--weights", type=Path, default=HERE / ".cache" / "monai_phantom.pth")
    parser.add_argument("--streams", action="store_true", help="also: per-tile ms, LATENCY vs THROUGHPUT")
    parser.add_argument(
        "--monai", action="store_true", help="also: MONAI's best (bf16 autocast where fast, else fp32) at 96"
    )
    args = parser.parse_args()
    if 96 not in args.tiles:
        parser.error("--tiles must include 96, the reference")

    shape = tuple(args.shape)
    if not args.weights.exists():
        print(f"training the benchmark model for {args.train_steps} steps ...", flush=True)
        train(args.weights, args.train_steps, shape)
    cpu = cpu_description()
    print(
        f"CPU: {cpu['model']}, {cpu['cores']} cores; flags {' '.join(cpu['flags'])}; fast bf16 "
        f"{cpu['fast_bf16']}; OpenVINO {cpu['openvino']}; torch {torch.__version__}; {load()}"
    )
    image, truth = make_phantom(shape, seed=7)
    print(f"phantom (z, y, x) {shape}, seed 7; weights {args.weights.name}; overlap {args.overlap}\n")

    def run(precision: str, size: int):
        model = na.load_model(args.weights)  # one object per row: each keeps its network
        hint = "THROUGHPUT" if precision == "int8-throughput" else quantize.INT8_HINT

        def call():
            before, quantize.INT8_HINT = quantize.INT8_HINT, hint  # read when the row compiles
            try:
                return na.predict(
                    image, model, normalization="none", tile=tile_for(size, shape), overlap=args.overlap,
                    precision=precision.split("-")[0], runtime=args.runtime, orientation="native",
                )  # fmt: skip
            finally:
                quantize.INT8_HINT = before

        return call

    rows = {(p, s): run(p, s) for p in args.precisions for s in args.tiles}
    if args.monai:
        rows["monai", 96] = monai_run(args.weights, image, args.overlap, bool(cpu["fast_bf16"]))
    for call in rows.values():  # warm-up: conversion, compilation, calibration
        call()
    times: dict[tuple[str, int], list[float]] = {k: [] for k in rows}
    outputs = {}
    for _ in range(args.repeats):  # interleaved, so that drifts in the machine's load are shared
        for key, call in rows.items():
            t = time.perf_counter()
            outputs[key] = call()
            times[key].append(time.perf_counter() - t)
    print(
        f"{'precision':9s} {'tile':>12s} {'windows':>7s} {'work':>5s} {'s':>6s} {'x tile 96':>9s}  "
        "Dice vs truth (bg, organ, lesion)   Dice vs tile 96 (bg, organ, lesion)"
    )
    if args.monai:
        labels = outputs["monai", 96].labels()
        truth_d = ", ".join(f"{dice(labels, truth, c):.4f}" for c in range(3))
        print(f"{'MONAI ' + outputs['monai', 96].precision:9s} {'96':>12s} {'':7s} {'':5s} "
              f"{min(times['monai', 96]):6.2f} {'':9s}  {truth_d}")  # fmt: skip
    for precision in args.precisions:
        ref_labels = outputs[precision, 96].labels()
        for size in args.tiles:
            key = (precision, size)
            pred = outputs[key]
            labels = pred.labels()
            windows, share = work(shape[::-1], tile_for(size, shape), args.overlap)
            ratio = float(np.median([a / b for a, b in zip(times[precision, 96], times[key], strict=True)]))
            truth_d = ", ".join(f"{dice(labels, truth, c):.4f}" for c in range(3))
            ref_d = ", ".join(f"{dice(labels, ref_labels, c):.4f}" for c in range(3))
            name = "whole" if size == 0 else str(size)
            print(
                f"{precision + ' ' + pred.precision:9s} {name + ' ' + 'x'.join(map(str, pred.tile)):>12s} "
                f"{windows:7d} {share:4.2f}x {min(times[key]):6.2f} {ratio:8.2f}x  {truth_d:34s} {ref_d}"
            )
    if args.monai:
        for key in [k for k in rows if k[0] != "monai"]:
            ratios = [a / b for a, b in zip(times["monai", 96], times[key], strict=True)]
            print(f"  {key[0]} {key[1] or 'whole'}: {float(np.median(ratios)):.2f}x MONAI's best")
    print(
        f"\n(best of {args.repeats} interleaved rounds; 'x tile 96' and 'x MONAI' are medians of the "
        f"per-round ratios; 'work' is the voxels the network computes over the volume's; now {load()})"
    )
    if args.streams:
        streams(args.weights, image, args.repeats)


class _Labels:
    """MONAI's output with the two things the table reads: labels and precision."""

    def __init__(self, labels: np.ndarray, precision: str) -> None:
        self._labels, self.precision = labels, precision

    def labels(self) -> np.ndarray:
        return self._labels


def monai_run(weights: Path, image: np.ndarray, overlap: float, bf16: bool):
    """MONAI's sliding_window_inference at roi 96, Gaussian blending, as bench_predict.py runs it."""
    from monai.inferers import sliding_window_inference

    net = monai_net()
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0)))[None, None]

    def call():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = sliding_window_inference(
                x, (96,) * 3, 1, net, overlap=overlap, mode="gaussian", sigma_scale=0.125
            )
        return _Labels(out.float().argmax(1)[0].numpy().transpose(2, 1, 0), "bf16" if bf16 else "fp32")

    return call


def streams(weights: Path, image: np.ndarray, repeats: int) -> None:
    """Milliseconds per 96^3 tile for OpenVINO bf16 and int8 with the LATENCY hint (one stream,
    every core on one tile: what na.predict compiles) and THROUGHPUT (a stream per request,
    tiles side by side), interleaved; int8 calibrated on up to 16 tiles of the phantom."""
    from napari_attunet.inference import runtime_openvino as ro

    model = na.load_model(weights)
    xyz = np.ascontiguousarray(image.transpose(2, 1, 0))
    tile = tuple(min(96, n) for n in xyz.shape)
    starts = window_grid(xyz.shape, tile, (8, 8, 8), 0.25)[:16]
    windows = [xyz[None, None, x : x + 96, y : y + 96, z : z + 96].copy() for x, y, z in starts]
    fp32 = ro.converted(model)
    int8 = quantize.quantize_model(fp32, windows, "all")
    nets = {
        (name, hint): ro.compile_network(ov, len(model.spec.gates), precision, hint)
        for name, ov, precision in (("bf16", fp32, "bf16"), ("int8", int8, "fp32"))
        for hint in ("LATENCY", "THROUGHPUT")
    }
    best = seconds_per_tile(nets, torch.from_numpy(np.concatenate(windows[:4])), repeats)
    shape = "x".join(map(str, tile))
    print(f"\nOpenVINO per {shape} tile (4 tiles in batches of the hint's requests; {load()}):")
    for (name, hint), seconds in best.items():
        print(f"  {name} {hint:10s} {nets[name, hint].parallel} requests: {1000 * seconds:6.0f} ms")


if __name__ == "__main__":
    main()

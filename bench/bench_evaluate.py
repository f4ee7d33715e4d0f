"""``na.evaluate`` on a 256^3 pair with 3 foreground classes (target: < 2 s on 2 cores), against
MONAI's ``compute_dice`` + ``compute_hausdorff_distance(percentile=95)`` +
``compute_average_surface_distance(symmetric=True)`` on the same pair, in the same process,
interleaved; every number is checked to agree.

    python bench/bench_evaluate.py [--size 256] [--repeats 3]

The pair: three nested classes with rough, noisy surfaces (about 400k, 160k and 40k edge voxels;
HD95 2 to 3 mm) and anisotropic voxels (1.2 x 0.9 x 0.9 mm). Times are wall-clock and CPU
(process time, all threads): on a busy shared machine the CPU time says what a quiet one takes.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import numpy as np
from common import machine, timed  # noqa: E402 - puts the checkout first

import napari_attunet as na  # noqa: E402

SPACING = (1.2, 0.9, 0.9)


def make_pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    rough = ndimage.zoom(
        ndimage.gaussian_filter(rng.standard_normal((n // 4,) * 3).astype(np.float32), 3), 4, order=1
    )
    z, y, x = np.ogrid[:n, :n, :n]
    radius = np.sqrt((z - n / 2) ** 2 + (y - n / 2) ** 2 + (x - n / 2) ** 2) / (n / 2)
    field = rough / rough.std() * 0.15 + radius
    noise = ndimage.zoom(
        ndimage.gaussian_filter(rng.standard_normal((n // 8,) * 3).astype(np.float32), 1.5), 8, order=1
    )
    shifted = field + noise / noise.std() * 0.02
    ref = np.zeros((n,) * 3, np.uint8)
    pred = np.zeros_like(ref)
    for value, level in ((1, 0.9), (2, 0.6), (3, 0.3)):
        ref[field < level] = value
        pred[shifted < level] = value
    return pred, ref


def monai(pred: np.ndarray, ref: np.ndarray) -> list[tuple[float, float, float]]:
    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

    p = torch.stack([torch.from_numpy(pred == v) for v in (1, 2, 3)])[None].float()
    r = torch.stack([torch.from_numpy(ref == v) for v in (1, 2, 3)])[None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = compute_dice(p, r, include_background=True)[0]
        hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(SPACING))[
            0
        ]
        asd = compute_average_surface_distance(
            p, r, include_background=True, symmetric=True, spacing=list(SPACING)
        )[0]
    return [(float(dice[i]), float(hd[i]), float(asd[i])) for i in range(3)]


def ours(pred: np.ndarray, ref: np.ndarray) -> list[tuple[float, float, float]]:
    return [(r.dice, r.hd95_mm, r.assd_mm) for r in na.evaluate(pred, ref, spacing=SPACING)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    print(machine())
    pred, ref = make_pair(args.size)
    print(f"pair: {args.size}^3, 3 foreground classes, voxels {SPACING} mm")
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "monai": []}
    for k in range(args.repeats):
        got, wall, cpu_s = timed(ours, pred, ref)
        times["ours"].append((wall, cpu_s))
        if k < max(1, args.repeats - 1):  # MONAI takes tens of seconds a run
            expected, wall_m, cpu_m = timed(monai, pred, ref)
            times["monai"].append((wall_m, cpu_m))
            for (d, h, a), (dm, hm, am) in zip(got, expected, strict=True):
                assert abs(d - dm) < 1e-4 and abs(h - hm) < 1e-3 and abs(a - am) < 1e-3, (got, expected)
        print(
            f"run {k + 1}: ours {wall:.2f} s wall / {cpu_s:.2f} s CPU"
            + (f"; MONAI {wall_m:.2f} s wall / {cpu_m:.2f} s CPU" if k < max(1, args.repeats - 1) else "")
        )
    o_wall = statistics.median(w for w, _ in times["ours"])
    o_cpu = statistics.median(c for _, c in times["ours"])
    m_wall = statistics.median(w for w, _ in times["monai"])
    m_cpu = statistics.median(c for _, c in times["monai"])
    print(
        f"median: ours {o_wall:.2f} s wall ({o_cpu:.2f} s CPU); MONAI {m_wall:.2f} s wall ({m_cpu:.2f} s CPU)"
    )
    print(f"MONAI / ours: {m_wall / o_wall:.1f}x wall, {m_cpu / o_cpu:.1f}x CPU; every metric agrees")
    for v, (d, h, a) in enumerate(got, start=1):
        print(f"  class {v}: Dice {d:.4f}  HD95 {h:.3f} mm  ASSD {a:.3f} mm")


if __name__ == "__main__":
    main()

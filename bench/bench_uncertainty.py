"""What the uncertainty layer costs.

    python bench/bench_uncertainty.py [--size 256] [--repeats 5] [--tta]

1. ``Prediction.uncertainty`` (normalised entropy from the stored uint8 probabilities) on the
   bundled MNI152 demo, against the run that produced it (the widget computes it once per run,
   in the worker).
2. The same on a synthetic SIZE^3, 3-class prediction (the cost grows with voxels x classes).
3. With --tta: the demo run with test-time flips, whose flip disagreement (one more stitched
   channel, a sum of squares per flip) is part of the run; compare with the same command on a
   checkout without it to see the difference.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import best_of, machine  # noqa: E402 - puts the checkout first

import napari_attunet as na  # noqa: E402
from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_SCAN  # noqa: E402
from napari_attunet.inference.postprocess import Prediction, quantize, uncertainty_map  # noqa: E402
from napari_attunet.scans import io  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args()
    print(machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    volume = io.read(DEMO_SCAN)
    model = na.load_model(DEMO_CHECKPOINT)
    na.predict(volume.array, model, spacing=volume.spacing)  # warm-up
    runs = []
    for _ in range(args.repeats):
        pred = na.predict(volume.array, model, spacing=volume.spacing)
        runs.append(pred.seconds)
    run = min(runs)
    entropy = best_of(lambda: uncertainty_map(pred.quantized, pred.output), args.repeats)
    print(
        f"demo {pred.shape}, {len(pred.class_names)} classes: run {run:.2f} s, "
        f"uncertainty {entropy * 1000:.1f} ms = {100 * entropy / run:.2f} % of the run"
    )

    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(3,) + (args.size,) * 3).astype(np.float32))
    synthetic = Prediction(
        quantized=quantize(torch.softmax(logits, 0)),
        output="softmax",
        class_names=("background", "a", "b"),
        gates=[],
    )
    del logits
    big = best_of(lambda: uncertainty_map(synthetic.quantized, "softmax"), args.repeats)
    print(
        f"synthetic {args.size}^3, 3 classes: uncertainty {big * 1000:.0f} ms, "
        f"{synthetic.shape[0] * synthetic.shape[1] * synthetic.shape[2] * 4 / 2**20:.0f} MiB "
        "float32 layer"
    )

    if args.tta:
        times = [
            na.predict(volume.array, model, spacing=volume.spacing, tta=True).seconds
            for _ in range(max(1, args.repeats // 2))
        ]
        print(f"demo with TTA (8 flips, disagreement included): run {min(times):.2f} s")


if __name__ == "__main__":
    main()

"""How fast a threshold change reaches the Labels layer, on a 256^3 volume (target: < 100 ms).

    xvfb-run -a python bench/bench_thresholds.py

Times, in a real viewer: the slider change until the slice on screen is re-labelled and painted,
and the whole-volume re-label (features and volume table included) that follows when the
slider rests. The probabilities are synthetic; the network plays no part in a threshold change.
"""

from __future__ import annotations

import time
from pathlib import Path

import napari  # noqa: E402
import numpy as np
import torch
from common import machine, official_network  # noqa: E402 - puts the checkout first
from qtpy.QtWidgets import QApplication  # noqa: E402

import napari_attunet as na  # noqa: E402
from napari_attunet.inference.postprocess import Prediction, quantize  # noqa: E402
from napari_attunet.plugin.layers import SourceGeometry  # noqa: E402


def main(size: int = 256, repeats: int = 5) -> None:
    viewer = napari.Viewer()
    image = viewer.add_image(np.zeros((size,) * 3, np.float32), name="volume")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    path = Path("/tmp/attunet_bench_thresholds.safetensors")
    na.save_model(official_network(out_channels=3), path, class_names=["background", "a", "b"])
    widget.load_checkpoint(path)
    logits = torch.randn((3,) + (size // 8,) * 3)
    logits = torch.nn.functional.interpolate(logits[None], size=(size,) * 3, mode="trilinear")[0]
    pred = Prediction(quantize(torch.softmax(4 * logits, 0)), "softmax", ("background", "a", "b"), [])
    widget.results.show(pred, SourceGeometry.from_layer(image), None, False)
    while widget.busy:
        QApplication.processEvents()
    slice_times, full_times = [], []
    for k in range(repeats):
        t = time.perf_counter()
        widget.thresholds[0].value = 0.3 + 0.1 * k
        QApplication.processEvents()  # paint
        slice_times.append(time.perf_counter() - t)
        widget.results.relabel_timer.stop()
        t = time.perf_counter()
        widget.results.relabel_all()
        QApplication.processEvents()
        full_times.append(time.perf_counter() - t)
    print(machine())
    print(
        f"{size}^3, 3 classes: visible slice re-labelled and painted in "
        f"{np.median(slice_times) * 1000:.0f} ms (median of {repeats}); whole volume with "
        f"features and table {np.median(full_times) * 1000:.0f} ms"
    )
    viewer.close()


if __name__ == "__main__":
    main()

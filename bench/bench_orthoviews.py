"""Linked orthogonal views: how long moving the crosshair takes to redraw the three planes.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/bench_orthoviews.py [--size 256] [--moves 30]

One viewer at 1600x1000; a size^3 int16 scan opened through the plugin's reader (a NIfTI on
disk, 1 mm), and the four layers a run adds: labels (uint8, 3 classes), two gate maps on their
coarser grids (strides 4 and 8) and the uncertainty (float32, scan grid) - five layers, all
visible. With the orthogonal views on, each move sets the crosshair at a random voxel (all three
planes change) and is timed until the three canvases have drawn once each and the GL has
finished; the same moves with the views off (the slider's point set in the one canvas) for
comparison, interleaved in the same process. Printed: median and 90th percentile per move, and
the part spent slicing (setting the point) before drawing. Figures, not pass/fail: the machine
is shared and noisy, and Xvfb renders with software OpenGL (llvmpipe).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _volume(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head-like scan (a bright ellipsoid shell around a dimmer core), its labels and a
    smooth uncertainty map."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    r = np.sqrt((z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2)
    scan = np.where(r < 1.0, 400 + 300 * (r > 0.8), 0).astype(np.int16)
    labels = np.zeros(scan.shape, np.uint8)
    labels[r < 0.8] = 2
    labels[(r >= 0.8) & (r < 1.0)] = 1
    uncertainty = np.exp(-(((r - 0.8) / 0.05) ** 2)).astype(np.float32)
    return scan, labels, uncertainty


DRAWS: dict[int, int] = {}


def _count_draws(canvas) -> None:
    key = id(canvas)
    DRAWS.setdefault(key, 0)

    def on_draw(event=None) -> None:
        DRAWS[key] += 1

    canvas._scene_canvas.events.draw.connect(on_draw)


def _redraw(canvases) -> None:
    """Let Qt paint what the move scheduled, paint any canvas it left (so each draws once),
    and wait for the GL to finish."""
    from qtpy.QtWidgets import QApplication

    before = {id(c): DRAWS.get(id(c), 0) for c in canvases}
    QApplication.processEvents()
    for canvas in canvases:
        if DRAWS.get(id(canvas), 0) == before[id(canvas)]:
            canvas._scene_canvas.native.repaint()
        canvas._scene_canvas.context.finish()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--moves", type=int, default=30)
    args = parser.parse_args()

    import napari
    import SimpleITK as sitk
    from qtpy.QtWidgets import QApplication

    from napari_attunet.plugin import orthoviews
    from napari_attunet.plugin.layers import alpha_ramp, label_colormap

    scan, labels, uncertainty = _volume(args.size)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-orthoviews-") as tmp:
        path = Path(tmp) / "head.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(scan), str(path))
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1600, 1000)
        (layer,) = viewer.open(str(path), plugin="napari-attunet")
    geometry = {"scale": layer.scale, "translate": layer.translate, "units": layer.units}
    viewer.add_labels(labels, name="labels", colormap=label_colormap(3), opacity=0.7, **geometry)
    for k, stride in enumerate((4, 8), start=1):
        coarse = rng.random(tuple(n // stride for n in scan.shape)).astype(np.float32)
        gate_geometry = {**geometry, "scale": tuple(np.asarray(layer.scale) * stride)}
        viewer.add_image(
            coarse, name=f"gate {k}", colormap=alpha_ramp("inferno"), opacity=0.8, **gate_geometry
        )
    viewer.add_image(uncertainty, name="uncertainty", colormap=alpha_ramp("magenta"), **geometry)

    main_canvas = viewer.window._qt_viewer.canvas
    _count_draws(main_canvas)
    points = [
        tuple(float(v) for v in rng.integers(0, args.size, 3) * np.asarray(layer.scale))
        for _ in range(args.moves)
    ]
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)

    slicing: dict[str, list[float]] = {}

    def timed(move, canvases, name: str) -> list[float]:
        out = []
        for point in points:
            start = time.perf_counter()
            move(point)
            sliced = time.perf_counter()
            _redraw(canvases)
            out.append(time.perf_counter() - start)
            slicing.setdefault(name, []).append(sliced - start)
        return out

    def single(point) -> None:
        viewer.dims.point = point

    results: dict[str, list[float]] = {"one canvas (views off)": [], "three planes (views on)": []}
    for _ in range(2):  # interleaved: off, on, off, on
        _redraw([main_canvas])
        results["one canvas (views off)"] += timed(single, [main_canvas], "one canvas (views off)")
        views = orthoviews.show(viewer)
        assert views is not None
        for _ in range(20):
            QApplication.processEvents()
            time.sleep(0.02)
        views.reset_views()
        canvases = [main_canvas] + [qt.canvas for qt in views.qt_viewers.values()]
        for canvas in canvases[1:]:
            _count_draws(canvas)
        _redraw(canvases)
        results["three planes (views on)"] += timed(views.set_point, canvases, "three planes (views on)")
        orthoviews.show(viewer, on=False)

    print(f"CPU: {cpu_name()}; {args.size}^3, 5 layers, {args.moves} moves x 2 rounds; Xvfb, software GL")
    for name, times in results.items():
        ms = sorted(1000 * t for t in times)
        p90 = ms[int(0.9 * (len(ms) - 1))]
        sliced = statistics.median(1000 * t for t in slicing[name])
        print(
            f"{name:26s} median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   "
            f"(slicing {sliced:6.1f} ms, the rest drawing)"
        )
    viewer.close()


if __name__ == "__main__":
    main()

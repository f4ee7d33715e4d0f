"""The widget on a zarr-backed layer: how the event loop fares while store-backed layers fill in.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/bench_store_view.py [--size 96] [--block 48]

One viewer; a float32 volume of noise in a zarr store on disk as a dask layer, a random official 3D
network (3 classes), tile 32. Run writes an OME-Zarr store beside the scan; a 10 ms Qt timer
records the event loop's ticks; then the same volume as a numpy layer (in-memory run) for
comparison, in the same process. Printed: the run's time, the refreshes (count, mean cost), the
time to add the five layers (one per event-loop turn) and the longest gaps between ticks, split
into "adding layers" and "while the run fills them in". Figures, not pass/fail: the machine is
shared and noisy; Xvfb renders with software OpenGL.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine  # noqa: E402 - puts the checkout first

sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--block", type=int, default=48, help="BLOCK_BUDGET = block^3 context voxels")
    parser.add_argument("--tile", type=int, default=32)
    args = parser.parse_args()

    import dask.array as da
    import napari
    import zarr
    from helpers import make_model, official_spec
    from qtpy.QtCore import QTimer

    import napari_attunet as na
    from napari_attunet.inference import blockwise

    blockwise.BLOCK_BUDGET = args.block**3
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-view-"))
    try:
        model = make_model(official_spec(3, out_ch=3), seed=5)
        checkpoint = na.save_model(
            model, tmp / "m.safetensors", class_names=["background", "organ", "lesion"]
        )
        n = args.size
        data = np.random.default_rng(4).normal(size=(n, n, n)).astype(np.float32)
        store = zarr.create_array(tmp / "scan.zarr", shape=data.shape, chunks=(32, 32, 32), dtype="float32")
        store[:] = data
        viewer = napari.Viewer(show=True)
        layer = viewer.add_image(da.from_zarr(str(tmp / "scan.zarr")), name="scan")
        _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
        widget.load_checkpoint(checkpoint)
        widget.tile.value = args.tile
        widget.image.value = layer
        viewer.dims.set_point(0, n // 2)
        app = napari.qt.get_qapp()
        ticks: list[float] = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start(10)
        start = time.perf_counter()
        widget.run.clicked.emit()
        run = widget.results.store_run
        added = None
        while widget.busy:
            app.processEvents()
            if added is None and run.partial is not None and not run.pending:
                added = time.perf_counter()
            time.sleep(0.002)
        end = time.perf_counter()
        for _ in range(20):
            app.processEvents()
            time.sleep(0.005)
        timer.stop()
        t = np.asarray(ticks)
        gaps = np.diff(t)
        filling = gaps[t[1:] > (added or end)]
        adding = gaps[t[1:] <= (added or end)]
        print(f"{machine()}; {widget.status.value}")
        print(f"volume {n}^3, blocks of at most {args.block}^3 context voxels, tile {args.tile}")
        print(f"run {end - start:.1f} s; layers in after {(added or end) - start:.1f} s")
        print(f"refreshes {run.refreshes}, mean {1000 * run.refresh_seconds / max(1, run.refreshes):.0f} ms")
        print(f"longest gap while adding layers {1000 * adding.max():.0f} ms")
        print(
            f"while filling in: longest gap {1000 * filling.max():.0f} ms, "
            f"99th percentile {1000 * np.percentile(filling, 99):.0f} ms, ticks {len(filling)}"
        )
        # the same volume held in memory, in-memory run: the event loop's gaps while the network runs
        eager = viewer.add_image(data, name="eager")
        widget.image.value = eager
        ticks.clear()
        yielded: list[float] = []
        timer.start(10)
        start = time.perf_counter()
        worker = widget.start()
        worker.yielded.connect(lambda step: yielded.append(time.perf_counter()))
        while widget.busy:
            app.processEvents()
            time.sleep(0.002)
        timer.stop()
        t = np.asarray(ticks)
        running = np.diff(t[t <= yielded[-1] + 0.01])
        print(
            f"in-memory run of the same volume: {time.perf_counter() - start:.1f} s; while running: "
            f"longest gap {1000 * running.max():.0f} ms, "
            f"99th percentile {1000 * np.percentile(running, 99):.0f} ms"
        )
        viewer.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`napari-attunet demo`: napari with the MNI152 sample, the widget docked with the demo
checkpoint, one run, labels and gate overlays on screen."""

from __future__ import annotations

import time
from pathlib import Path


def _settle(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def run_demo(screenshot: str | None = None, checkpoint: str | None = None) -> int:
    """Open the demo; with ``screenshot``, save the window as PNG when the run is shown, and exit."""
    import napari
    from qtpy.QtWidgets import QApplication

    from ..demo_data import DEMO_CHECKPOINT

    viewer = napari.Viewer(title="napari-attunet demo")
    viewer.window._qt_window.resize(1400, 860)
    (scan,) = viewer.open_sample("napari-attunet", "mni152")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    if not widget.load_checkpoint(checkpoint or DEMO_CHECKPOINT):
        viewer.close()
        return 1
    widget.image.value = scan
    widget.start()
    if screenshot is None:
        napari.run()
        return 0
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.01)
    if not widget.status.value.startswith("done"):
        viewer.close()
        return 1
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers[f"{scan.name} attunet"]
    _settle()
    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(screenshot), canvas_only=False)
    viewer.close()
    return 0

"""Regenerate docs/screenshot.png: the phantom sample, a checkpoint, one run, under Xvfb.

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshot.py CKPT
"""

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication


def main(checkpoint: str, out: str = str(Path(__file__).with_name("screenshot.png"))) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 820)
    viewer.open_sample("napari-attunet", "phantom")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    widget.load_checkpoint(checkpoint)
    widget.image.value = viewer.layers["phantom"]
    widget.start()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.01)
    viewer.dims.current_step = (24, 48, 48)
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers["phantom attunet"]
    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.01)
    viewer.screenshot(out, canvas_only=False)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])

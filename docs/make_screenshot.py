"""Regenerate docs/screenshot.png: the MNI152 demo after one run, with the labels (outlined), the
finest gate and the uncertainty on, under Xvfb.

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshot.py [CKPT [OUT]]
"""

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication


def _settle(seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def main(checkpoint: str = "", out: str = str(Path(__file__).with_name("screenshot.png"))) -> None:
    from napari_attunet.demo_data import DEMO_CHECKPOINT

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    (scan,) = viewer.open_sample("napari-attunet", "mni152")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    widget.load_checkpoint(checkpoint or DEMO_CHECKPOINT)
    widget.image.value = scan
    widget.show_uncertainty.value = True
    widget.start()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.01)
    centre = tuple(n // 2 for n in scan.data.shape)
    viewer.dims.current_step = (centre[0] + 6, centre[1] + 4, centre[2] + 10)
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers[f"{scan.name} attunet"]
    _settle()
    viewer.screenshot(out, canvas_only=False)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])

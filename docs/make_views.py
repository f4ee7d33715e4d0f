"""Regenerate docs/views/*.png: the MNI152 demo after a run, in every plane and in 3D, with and
without the uncertainty layer, and the linked orthogonal views (orthogonal.png), under Xvfb.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_views.py [OUT_DIR]
"""

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

PLANES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


def _settle(seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def main(out: str = str(Path(__file__).with_name("views"))) -> None:
    from napari_attunet.demo_data import DEMO_CHECKPOINT
    from napari_attunet.plugin import orthoviews

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1800, 900)
    (scan,) = viewer.open_sample("napari-attunet", "mni152")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    widget.load_checkpoint(DEMO_CHECKPOINT)
    widget.image.value = scan
    widget.start()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.01)
    centre = tuple(n // 2 for n in scan.data.shape)
    centre = (centre[0] + 6, centre[1] + 4, centre[2] + 10)  # off the midline: both classes show

    def shot(name: str, view=None) -> None:
        viewer.reset_view()
        if view is not None:
            viewer.scene.camera.set_view_direction(*view)
        _settle()
        path = out_dir / f"{name}.png"
        viewer.screenshot(str(path), canvas_only=False)
        print(path)

    for uncertainty in (False, True):
        widget.show_uncertainty.value = uncertainty
        suffix = "_uncertainty" if uncertainty else ""
        for plane, order in PLANES.items():
            viewer.dims.ndisplay = 2
            viewer.dims.order = order
            viewer.dims.current_step = centre
            shot(f"{plane}{suffix}")
        viewer.dims.order = (0, 1, 2)
        viewer.dims.ndisplay = 3
        # The left hemisphere cut away at the midline (labels and scan), seen from the front
        # and the patient's left, superior up: grey matter around white matter, gate hot spots.
        mid = scan.data_to_world((0, 0, scan.data.shape[2] // 2))
        for layer in viewer.layers:
            layer.experimental_clipping_planes = [
                {"position": tuple(mid), "normal": (0, 0, -1), "enabled": True}
            ]
        shot(f"3d{suffix}", ((-0.3, 0.6, -0.75), (1, 0, 0)))
        for layer in viewer.layers:
            layer.experimental_clipping_planes = []

    # Axial, coronal and sagittal at once, the crosshair through the same point off the midline.
    widget.show_uncertainty.value = False
    viewer.dims.ndisplay = 2
    widget.view_controls.three_planes.value = True
    _settle()
    views = orthoviews.show(viewer)
    views.set_point(scan.data_to_world(centre))
    views.reset_views()
    _settle()
    path = out_dir / "orthogonal.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(path)
    widget.view_controls.three_planes.value = False
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

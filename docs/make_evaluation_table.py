"""Regenerate docs/views/evaluation_table.png: the MNI152 demo after one run, the bundled grey and
white matter labels opened as the reference, Dice and HD95 in the volume table and the
disagreement layer over the scan; with ``compare``, docs/compare.png (the same pair in the
"Compare with a reference" dock), under Xvfb.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_evaluation_table.py [OUT]
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_evaluation_table.py compare
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


def _wait(busy) -> None:
    while busy():
        QApplication.processEvents()
        time.sleep(0.01)


def _run_and_truth():
    """A viewer with the demo scan, one run, and the ground truth opened from disk (a label map
    opens as a Labels layer)."""
    from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_LABELS

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    (scan,) = viewer.open_sample("napari-attunet", "mni152")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    widget.load_checkpoint(DEMO_CHECKPOINT)
    widget.image.value = scan
    widget.show_attention.value = False
    widget.label_style.value = "outlines"
    widget.start()
    _wait(lambda: widget.busy)
    (reference,) = viewer.open(str(DEMO_LABELS), plugin="napari-attunet")  # a label map: Labels
    reference.name = "ground truth"
    reference.visible = False  # the disagreement layer shows where the two differ
    return viewer, scan, widget, reference


def _show_slice(viewer, scan) -> None:
    centre = tuple(n // 2 for n in scan.data.shape)
    viewer.dims.current_step = (centre[0] + 6, centre[1] + 4, centre[2] + 10)
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers[f"{scan.name} disagreement"]
    _settle()


def main(out: str = str(Path(__file__).with_name("views") / "evaluation_table.png")) -> None:
    if out == "compare":
        compare(str(Path(__file__).with_name("compare.png")))
        return
    viewer, scan, widget, reference = _run_and_truth()
    viewer.layers[f"{scan.name} attunet"].visible = False  # the disagreement over the anatomy alone
    widget.reference.value = reference
    _wait(lambda: widget.comparison.follower.busy or widget.results.evaluation is None)
    _show_slice(viewer, scan)
    bar = widget.native.verticalScrollBar()
    for _ in range(3):  # the dock's end (the reference, its legend, the table), once laid out
        bar.setValue(bar.maximum())
        _settle()
    _close_toasts(viewer)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(out, canvas_only=False)
    print(out)


def _close_toasts(viewer) -> None:
    """The note that the truth opened as a label map, read; its toast would hide the scale bar."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _settle()


def compare(out: str) -> None:
    viewer, scan, main_widget, reference = _run_and_truth()
    viewer.window.remove_dock_widget(main_widget.native)
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Compare with a reference")
    result = viewer.layers[f"{scan.name} attunet"]
    result.visible = False
    widget.result.value = result
    widget.reference.value = reference
    _wait(lambda: widget.busy or not widget.agreement.value["data"])
    _show_slice(viewer, scan)
    _close_toasts(viewer)
    viewer.screenshot(out, canvas_only=False)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])

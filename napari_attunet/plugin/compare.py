"""Compare two Labels layers in napari: a result against a reference (a ground truth opened from
disk, one painted by hand, or another run or model's result).

The widget shows Dice, HD95, ASSD and volumes per class (``review.evaluate``), and keeps a
``<image> disagreement`` layer with the voxels that only the result labels (false positives, or
another class) in one colour and those that only the reference labels (false negatives) in
another. Both follow edits to either layer, at most once per ``THROTTLE_MS``, in a worker
thread, so that painting stays fluid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, Table

THROTTLE_MS = 400
COLUMNS = ("class", "Dice", "HD95 mm", "ASSD mm", "result mL", "reference mL")
FALSE_POSITIVE, FALSE_NEGATIVE = 1, 2
DISAGREEMENT_NAMES = ("agree", "only the result (false positive)", "only the reference (false negative)")
DISAGREEMENT_COLOURS = {
    0: (0.0, 0.0, 0.0, 0.0),
    FALSE_POSITIVE: (1.0, 0.35, 0.05, 1.0),  # orange-red
    FALSE_NEGATIVE: (0.1, 0.65, 1.0, 1.0),  # sky blue
    None: (0.0, 0.0, 0.0, 0.0),
}
SUFFIX = " disagreement"


def disagreement(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 where the result labels a voxel otherwise than the reference (it says foreground there),
    2 where only the reference labels it; 0 where they agree."""
    out = np.zeros(result.shape, dtype=np.uint8)
    differ = result != reference
    out[differ & (result != 0)] = FALSE_POSITIVE
    out[differ & (result == 0)] = FALSE_NEGATIVE
    return out


def layer_labels(layer, role: str):
    """A ``review`` LabelMap of a Labels layer: its data, world placement and class names."""
    from ..review.labelmaps import LabelMap
    from ..scans.geometry import compose, decompose

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    array = np.array(data)  # a copy: painting may go on while the worker reads it
    ndim = array.ndim
    world = np.asarray(layer.affine.affine_matrix, dtype=float)[-ndim - 1 :, -ndim - 1 :] @ compose(
        layer.scale, layer.translate
    )
    spacing, origin, direction = decompose(world)
    names = (layer.metadata.get("attunet") or {}).get("class_names")
    return LabelMap(
        array,
        f"{role} layer '{layer.name}'",
        spacing=spacing,
        origin=origin,
        direction=direction,
        names=tuple(names) if names else None,
    )


def compare(result, reference) -> tuple[Any, np.ndarray]:
    """In the worker: the evaluation rows and the disagreement map on the result's grid."""
    from ..review import evaluate
    from ..review.labelmaps import integer_labels, onto

    rows = evaluate(result, reference, class_names=result.names)
    ref = integer_labels(reference)
    pred = integer_labels(result)
    on_grid, _ = onto(ref, pred)
    return rows, disagreement(pred.array, on_grid)


class CompareWidget(Container):
    """Pick a result and a reference (any Labels layers): a table of agreement per class and a
    disagreement layer, kept up to date while either is edited."""

    def __init__(self, napari_viewer):
        from qtpy.QtCore import QTimer

        self.viewer = napari_viewer
        self.result = ComboBox(name="result", label="result", choices=self._choices, nullable=True)
        self.reference = ComboBox(name="reference", label="reference", choices=self._choices, nullable=True)
        self.agreement = Table(name="agreement", value={c: [] for c in COLUMNS})
        self.status = Label(name="status", value="pick a result and a reference")
        super().__init__(widgets=[self.result, self.reference, self.agreement, self.status])
        self.agreement.native.verticalHeader().setVisible(False)
        self.native.setMinimumWidth(560)
        self.busy = False
        self._pending = False
        self._closed = False
        self._watched: list = []
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(THROTTLE_MS)
        self._timer.timeout.connect(self.refresh)
        self.result.changed.connect(self._watch)
        self.reference.changed.connect(self._watch)
        napari_viewer.layers.events.inserted.connect(self._layers_changed)
        napari_viewer.layers.events.removed.connect(self._layers_changed)
        self.native.destroyed.connect(lambda *_: self._on_closed())

    def _on_closed(self) -> None:
        """The dock closed (or the viewer): follow nothing more."""
        self._closed = True
        self._unwatch()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.disconnect(self._layers_changed)

    def _layers_changed(self, _event=None) -> None:
        if not self._closed:
            self.reset_choices()

    def _choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and not layer.name.endswith(SUFFIX)
        ]

    def _unwatch(self) -> None:
        for layer, callback in self._watched:
            for event in (layer.events.paint, layer.events.data):
                event.disconnect(callback)
        self._watched = []

    def _watch(self, _value=None) -> None:
        """Follow the edits of the two layers picked (and no others)."""
        if self._closed:
            return
        self._unwatch()
        for layer in {id(x): x for x in (self.result.value, self.reference.value) if x is not None}.values():
            for event in (layer.events.paint, layer.events.data):
                event.connect(self.schedule)
            self._watched.append((layer, self.schedule))
        self.schedule()

    def schedule(self, _event=None) -> None:
        """A throttled refresh: the first edit starts the timer, later ones ride along."""
        if not self._closed and not self._timer.isActive():
            self._timer.start()

    def refresh(self) -> None:
        """Compare the two layers now, in a worker; a refresh asked meanwhile runs after it."""
        from napari.qt.threading import thread_worker

        from ..errors import InputError

        if self._closed:
            return
        result, reference = self.result.value, self.reference.value
        if result is None or reference is None or result is reference:
            self.status.value = "pick a result and a reference (two different Labels layers)"
            return
        if self.busy:
            self._pending = True
            return
        try:
            pred, ref = layer_labels(result, "result"), layer_labels(reference, "reference")
        except ValueError as exc:
            self._show_error(str(exc))
            return
        self.busy = True
        self.status.value = "comparing..."

        @thread_worker
        def work():
            return compare(pred, ref)

        def done(out) -> None:
            if self._closed:
                return
            rows, disagree = out
            self._show(rows, result, disagree)

        def failed(exc: Exception) -> None:
            if not self._closed:
                self._show_error(
                    str(exc) if isinstance(exc, InputError) else f"the comparison failed ({exc})."
                )

        worker = work()
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(self._finished)
        worker.start()

    def _finished(self) -> None:
        self.busy = False
        if self._pending and not self._closed:
            self._pending = False
            self.schedule()

    def _show(self, rows, result, disagree: np.ndarray) -> None:
        self.agreement.value = {
            "class": [r.name for r in rows],
            "Dice": [round(r.dice, 4) for r in rows],
            "HD95 mm": [round(r.hd95_mm, 4) for r in rows],
            "ASSD mm": [round(r.assd_mm, 4) for r in rows],
            "result mL": [round(r.volume_pred_ml, 2) for r in rows],
            "reference mL": [round(r.volume_ref_ml, 2) for r in rows],
        }
        self.agreement.native.resizeColumnsToContents()
        notes = rows.notes + [r.note for r in rows if r.note]
        self.status.value = " ".join(notes) if notes else "up to date"
        self._disagreement_layer(result, disagree)

    def _disagreement_layer(self, result, disagree: np.ndarray) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        base = result.name[: -len(" attunet")] if result.name.endswith(" attunet") else result.name
        name = base + SUFFIX
        features = {"index": [0, 1, 2], "class": list(DISAGREEMENT_NAMES)}
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = disagree
            layer.features = features
            return
        self.viewer.add_labels(
            disagree,
            name=name,
            colormap=DirectLabelColormap(color_dict=DISAGREEMENT_COLOURS),
            features=features,
            scale=result.scale,
            translate=result.translate,
            affine=result.affine,
            opacity=0.8,
            metadata={"attunet_compare": {"result": result.name, "reference": self.reference.value.name}},
        )

    def _show_error(self, message: str) -> None:
        from .notify import notify

        self.status.value = message
        notify("warning", message)

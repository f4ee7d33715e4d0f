"""Structures to double-check, in napari: each class of a Labels layer and its connected
components, with the mean uncertainty and uncertain mL from an uncertainty layer
(``review.structures``). Rows whose mean uncertainty is over the "uncertain over" level are
flagged; clicking a row moves the view to that structure."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSlider, FloatSpinBox, Label, Table

COLUMNS = ("class", "component", "mL", "mean uncertainty", "uncertain mL", "check")
FLAG_COLOUR = (150, 60, 20)


def _world(layer) -> np.ndarray:
    from ..scans.geometry import compose

    ndim = layer.ndim
    return np.asarray(layer.affine.affine_matrix, dtype=float)[-ndim - 1 :, -ndim - 1 :] @ compose(
        layer.scale, layer.translate
    )


class StructuresWidget(Container):
    """A table of structures of a Labels layer, by uncertainty; a click goes to one."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.segmentation = ComboBox(
            name="segmentation", label="labels", choices=self._labels_layers, nullable=True
        )
        self.uncertainty = ComboBox(
            name="uncertainty", label="uncertainty", choices=self._image_layers, nullable=True
        )
        self.level = FloatSlider(name="level", label="uncertain over", min=0.0, max=1.0, step=0.01, value=0.5)
        self.min_ml = FloatSpinBox(
            name="min_ml", label="components over (mL)", min=0.0, max=1e6, step=0.1, value=0.1
        )
        self.table = Table(name="structures", value={c: [] for c in COLUMNS})
        self.status = Label(name="status", value="pick a labels layer and its uncertainty")
        super().__init__(
            widgets=[self.segmentation, self.uncertainty, self.level, self.min_ml, self.table, self.status]
        )
        self.table.native.verticalHeader().setVisible(False)
        self.native.setMinimumWidth(520)
        self.rows: list = []
        self.busy = False
        self._closed = False
        self.table.native.cellClicked.connect(lambda row, _column: self.jump(row))
        for widget in (self.segmentation, self.uncertainty, self.level, self.min_ml):
            widget.changed.connect(self.refresh)
        napari_viewer.layers.events.inserted.connect(self._layers_changed)
        napari_viewer.layers.events.removed.connect(self._layers_changed)
        self.native.destroyed.connect(lambda *_: self._on_closed())

    def _on_closed(self) -> None:
        self._closed = True
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.disconnect(self._layers_changed)

    def _layers_changed(self, _event=None) -> None:
        if self._closed:
            return
        self.reset_choices()
        if self.uncertainty.value is None and self.segmentation.value is not None:
            self._guess_uncertainty()

    def _labels_layers(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [(x.name, x) for x in self.viewer.layers if isinstance(x, Labels)]

    def _image_layers(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(x.name, x) for x in self.viewer.layers if isinstance(x, Image)]

    def _guess_uncertainty(self) -> None:
        """``<image> uncertainty`` for ``<image> attunet``, as the main widget names them."""
        name = self.segmentation.value.name
        base = name[: -len(" attunet")] if name.endswith(" attunet") else name
        if f"{base} uncertainty" in self.viewer.layers:
            self.uncertainty.value = self.viewer.layers[f"{base} uncertainty"]

    def refresh(self, _value=None) -> None:
        from napari.qt.threading import thread_worker

        from ..review.structures import structures

        if self._closed:
            return
        if self.segmentation.value is not None and self.uncertainty.value is None:
            self._guess_uncertainty()
        labels, unc = self.segmentation.value, self.uncertainty.value
        if labels is None or unc is None:
            self.status.value = "pick a labels layer and its uncertainty"
            return
        if tuple(labels.data.shape) != tuple(unc.data.shape):
            self.status.value = (
                f"'{labels.name}' {tuple(labels.data.shape)} and '{unc.name}' {tuple(unc.data.shape)} "
                "are not on one grid; pick the uncertainty of that result."
            )
            return
        label_data, unc_data = np.array(labels.data), np.array(unc.data, dtype=np.float32)
        names = (labels.metadata.get("attunet") or {}).get("class_names")
        world, level, min_ml = _world(labels), float(self.level.value), float(self.min_ml.value)
        spacing = tuple(float(s) for s in np.linalg.norm(world[:-1, :-1], axis=0))
        self.busy = True
        self.status.value = "counting..."

        @thread_worker
        def work():
            return structures(label_data, unc_data, spacing, names, world, level, min_ml)

        def done(rows) -> None:
            if not self._closed:
                self._show(rows)

        worker = work()
        worker.returned.connect(done)
        worker.finished.connect(self._finished)
        worker.start()

    def _finished(self) -> None:
        self.busy = False

    def _show(self, rows) -> None:
        from qtpy.QtGui import QColor

        self.rows = rows
        self.table.value = {
            "class": [r.name for r in rows],
            "component": ["all" if r.component == 0 else str(r.component) for r in rows],
            "mL": [round(r.volume_ml, 2) for r in rows],
            "mean uncertainty": [round(r.mean_uncertainty, 3) for r in rows],
            "uncertain mL": [round(r.uncertain_ml, 2) for r in rows],
            "check": ["yes" if r.flagged else "no" for r in rows],
        }
        for k, r in enumerate(rows):
            if r.flagged:
                for column in range(len(COLUMNS)):
                    item = self.table.native.item(k, column)
                    if item is not None:
                        item.setBackground(QColor(*FLAG_COLOUR))
        self.table.native.resizeColumnsToContents()
        flagged = sum(r.flagged for r in rows)
        self.status.value = (
            f"{len(rows)} structures, {flagged} over the uncertainty level: click one to go there"
        )

    def jump(self, row: int) -> None:
        """Centre the view on the structure of a table row, and step every axis to it."""
        if not 0 <= row < len(self.rows):
            return
        centre = self.rows[row].centroid
        lead = self.viewer.dims.ndim - len(centre)
        for axis, value in enumerate(centre):
            self.viewer.dims.set_point(lead + axis, value)
        from .orientation import camera_of

        displayed = list(self.viewer.dims.displayed)
        camera_of(self.viewer).center = tuple(centre[a - lead] for a in displayed if a >= lead)

"""The main widget's reference: any Labels layer (a ground truth opened from disk, one painted by
hand, or another run or model's result) against the latest run's labels. The volume table gains
Dice and HD95 per class, and the ``<image> disagreement`` layer shows where the two differ; both
follow edits to either layer (``follower.Follower``: throttled, in a worker thread).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox, Label

from .follower import SUFFIX, Follower, is_disagreement, legend


def full_width(widget, label: bool = True) -> None:
    """A row of the form as wide as the dock: its label (if any) above it, not beside it (a
    table of several columns, a paragraph)."""
    from qtpy.QtWidgets import QBoxLayout

    row = widget._labeled_widget_ref() if hasattr(widget, "_labeled_widget_ref") else None
    if row is None:  # not in a labelled container (magicgui's wrapper row)
        return
    row.native.layout().setDirection(QBoxLayout.Direction.TopToBottom)
    row._label_widget.visible = label


class ReferencePicker(ComboBox):
    """A layer picker whose empty entry reads "none"."""

    null_string = "none"


class ReferenceComparison:
    """The ``reference`` picker and its line of explanation (``info``), wired to the latest
    run's labels (``results().labels_layer()``) and its volume table."""

    def __init__(self, viewer, info: Label, results: Callable[[], Any]):
        self.viewer = viewer
        self.info = info  # the legend, notes, or why there are no numbers
        self._results = results  # the widget's ResultLayers (made after this)
        self._closed = False
        self.picker = ReferencePicker(
            name="reference",
            label="reference",
            choices=self._choices,
            nullable=True,
            tooltip="Any Labels layer to score the result against (a ground truth, a mask painted "
            "by hand, another run's labels): Dice and HD95 per class in the table, and a "
            "disagreement layer. Both follow edits to either layer.",
        )
        self.follower = Follower(viewer, self._pair, self._show, self._show_error, self._layer_name)
        self.picker.changed.connect(self._on_pick)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.renamed):
            event.connect(self._layers_changed)
        self._wrap()

    def _wrap(self) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QSizePolicy

        self.info.native.setTextFormat(Qt.TextFormat.RichText)  # every text escaped: see _show
        self.info.native.setWordWrap(True)
        self.info.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.info.native.setMinimumWidth(0)

    def place(self, table) -> None:
        """Once in the form: the volume table and the line under the picker as wide as the dock
        (the table gains two columns)."""
        full_width(table)
        full_width(self.info, label=False)

    def close(self) -> None:
        self._closed = True
        self.follower.close()
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.renamed):
            event.disconnect(self._layers_changed)

    def _result(self):
        results = self._results()
        return results.labels_layer() if results is not None else None

    def _pair(self) -> tuple[Any, Any]:
        return self._result(), self.picker.value

    def _layer_name(self, result) -> str:
        """``<image> disagreement``, after the scan the run started from."""
        results = self._results()
        state = results.state if results is not None else None
        return (state.source.name if state is not None else result.name) + SUFFIX

    def _choices(self, _widget=None) -> list[tuple[str, Any]]:
        """Labels layers other than the result and the disagreement layers."""
        from napari.layers import Labels

        result = self._result()
        skip = result.name if result is not None else None
        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and layer.name != skip and not is_disagreement(layer)
        ]

    def _layers_changed(self, event=None) -> None:
        """Layers added, removed or renamed: the choices again, and a new run's labels (added
        or put in place) followed and compared."""
        layer = getattr(event, "value", None)  # none for a rename
        if self._closed or (layer is not None and is_disagreement(layer)):
            return
        from qtpy.QtCore import QTimer

        self._choose_again()
        QTimer.singleShot(0, self._choose_again)  # again once a run has made its layer the result

    def _choose_again(self) -> None:
        if self._closed:
            return
        self.picker.reset_choices()
        if self.picker.value is not None:
            self.follower.follow()

    def _on_pick(self, value=None) -> None:
        self.info.visible = value is not None
        if value is None:
            self.follower.clear()
        else:
            self.info.value = "comparing..."
            self.follower.follow()

    def _show(self, rows) -> None:
        """New numbers for the table, or None: the Dice and HD95 columns go."""
        results = self._results()
        if results is not None:
            results.show_agreement(rows)
        if rows is None:
            if self.picker.value is not None and self._result() is None:
                name = html.escape(self.picker.value.name)
                self.info.value = f"Run the model: its labels are then compared with '{name}'."
            return
        self.info.value = legend(self.follower.layer_name or "", rows)

    def _show_error(self, message: str) -> None:
        self.info.value = html.escape(message)

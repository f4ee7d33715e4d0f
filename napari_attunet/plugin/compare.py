"""Compare two Labels layers in napari: a result against a reference (a ground truth opened from
disk, one painted by hand, or another run or model's result).

The dock shows Dice, HD95, ASSD and volumes per class (``review.evaluate``); the
``<image> disagreement`` layer, the following of edits and the throttled recompute in a worker
thread are ``follower.Follower``'s, shared with the main widget's reference picker.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Container, Label, Table

from .follower import (  # noqa: F401 - the names this dock's users and tests know
    DISAGREEMENT_COLOURS,
    DISAGREEMENT_NAMES,
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    SUFFIX,
    THROTTLE_MS,
    Follower,
    is_disagreement,
    legend,
)

COLUMNS = ("class", "Dice", "HD95 mm", "ASSD mm", "result mL", "reference mL")
WAITING = "pick a result and a reference (two different Labels layers)"


class CompareWidget(Container):
    """Pick a result and a reference (any Labels layers): a table of agreement per class and a
    disagreement layer, kept up to date while either is edited."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.result = ComboBox(name="result", label="result", choices=self._choices, nullable=True)
        self.reference = ComboBox(name="reference", label="reference", choices=self._choices, nullable=True)
        self.agreement = Table(name="agreement", value={c: [] for c in COLUMNS})
        self.status = Label(name="status", value="pick a result and a reference")
        super().__init__(widgets=[self.result, self.reference, self.agreement, self.status])
        self.agreement.native.verticalHeader().setVisible(False)
        self._rich_status()
        self.native.setMinimumWidth(560)
        self._closed = False
        self.follower = Follower(
            napari_viewer,
            lambda: (self.result.value, self.reference.value),
            self._show,
            self._show_error,
        )
        self.result.changed.connect(self.follower.follow)
        self.reference.changed.connect(self.follower.follow)
        napari_viewer.layers.events.inserted.connect(self._layers_changed)
        napari_viewer.layers.events.removed.connect(self._layers_changed)
        self.native.destroyed.connect(lambda *_: self._on_closed())

    def _rich_status(self) -> None:
        """The status line wraps, and is rich text (the legend's coloured squares): every text
        put there is escaped."""
        from qtpy.QtCore import Qt

        self.status.native.setTextFormat(Qt.TextFormat.RichText)
        self.status.native.setWordWrap(True)

    @property
    def busy(self) -> bool:
        return self.follower.busy

    def refresh(self) -> None:
        """Compare the two layers now (edits do this by themselves, throttled)."""
        self.follower.refresh()

    def _on_closed(self) -> None:
        """The dock closed (or the viewer): follow nothing more."""
        self._closed = True
        self.follower.close()
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
            if isinstance(layer, Labels) and not is_disagreement(layer)
        ]

    def _show(self, rows) -> None:
        if rows is None:
            self.agreement.value = {c: [] for c in COLUMNS}
            self.status.value = WAITING
            return
        self.agreement.value = {
            "class": [r.name for r in rows],
            "Dice": [round(r.dice, 4) for r in rows],
            "HD95 mm": [round(r.hd95_mm, 4) for r in rows],
            "ASSD mm": [round(r.assd_mm, 4) for r in rows],
            "result mL": [round(r.volume_pred_ml, 2) for r in rows],
            "reference mL": [round(r.volume_ref_ml, 2) for r in rows],
        }
        self.agreement.native.resizeColumnsToContents()
        self.status.value = legend(self.follower.layer_name or "", rows)

    def _show_error(self, message: str) -> None:
        import html

        self.status.value = html.escape(message)

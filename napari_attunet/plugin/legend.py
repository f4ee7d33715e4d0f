"""The colour legend in the dock: what each colour on the canvas means, read from the layers
that draw it (the labels' colormap and classes, a gate's and the uncertainty's colormaps and
levels), so that it cannot drift from the picture. It follows the viewer's layers as they are
added, removed, shown, hidden or recoloured."""

from __future__ import annotations

import html

import numpy as np
from magicgui.widgets import Label

from .live_store import STORE_TAG

SWATCH = "&#9632;"  # a filled square: a class
LINE = "&#9473;&#9473;"  # a heavy line: a map's iso-line or surface
TOOLTIP = (
    "The colours on the canvas, read from the layers that draw them. Labels: a square per label "
    "value and class; drawn as outlines, each border is drawn once, in the colour of the higher "
    "value (grey matter's outer border in its colour, its border with white matter in white "
    "matter's). Gate: contour lines of the attention coefficient, higher inside (in 3D the "
    "surface at the layer's iso threshold). Uncertainty (normalised entropy): the line at "
    "'uncertain over', faintly tinted above it (in 3D the surface there)."
)
WATCHED = ("visible", "colormap", "contrast_limits", "iso_threshold", "contour", "features", "name")


def hex_colour(rgba) -> str:
    r, g, b = (int(round(float(c) * 255)) for c in np.asarray(rgba, float).reshape(-1)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _coloured(mark: str, rgba) -> str:
    return f'<span style="color:{hex_colour(rgba)}">{mark}</span>'


def map_kind(layer) -> str | None:
    """ "gate", "uncertainty" or None: which of a run's maps ``layer`` draws."""
    meta = getattr(layer, "metadata", None) or {}
    if "attunet_gate" in meta:
        return "gate"
    if "attunet_uncertainty" in meta:
        return "uncertainty"
    kind = (meta.get(STORE_TAG) or {}).get("kind")  # a run written to a result store
    return kind if kind in ("gate", "uncertainty") else None


def is_run_labels(layer) -> bool:
    meta = getattr(layer, "metadata", None) or {}
    return hasattr(layer, "contour") and (
        "attunet" in meta or (meta.get(STORE_TAG) or {}).get("kind") == "labels"
    )


def drawn_levels(layer) -> tuple[list[float], np.ndarray, bool]:
    """The values a map is drawn at, their colour, and whether it is a 3D surface.

    2D iso-lines are the peaks of the colormap's opacity, over the layer's contrast limits; a
    3D surface (an opaque colormap) is at the layer's iso threshold, in the colour there."""
    cmap = layer.colormap
    lo, hi = (float(v) for v in layer.contrast_limits)
    colours = np.asarray(cmap.colors, float)
    alpha = colours[:, 3]
    k = np.arange(1, alpha.size - 1)
    peaks = k[(alpha[k] >= alpha[k - 1]) & (alpha[k] > alpha[k + 1]) & (alpha[k] > 0.5)]
    if peaks.size and alpha.min() == 0.0:
        controls = np.asarray(cmap.controls, float)
        return [lo + float(controls[i]) * (hi - lo) for i in peaks], colours[peaks[-1]], False
    level = float(layer.iso_threshold)
    t = float(np.clip((level - lo) / ((hi - lo) or 1.0), 0.0, 1.0))
    return [level], np.asarray(cmap.map(np.array([t]))[0], float), True


def labels_line(layer) -> str:
    """One swatch per label value with its class name, from the layer's colormap and features."""
    features = layer.features
    names = [str(n) for n in features["class"]] if "class" in features else []
    values = [int(v) for v in features["index"]] if "index" in features else list(range(len(names)))
    return "&nbsp;&nbsp; ".join(
        f"{_coloured(SWATCH, layer.colormap.map(np.array([v]))[0])}&nbsp;{v}&nbsp;{html.escape(n)}"
        for v, n in zip(values, names, strict=False)
        if v != 0
    )


def map_line(layer, kind: str) -> str:
    """A map's colour and the values it is drawn at."""
    levels, rgba, surface = drawn_levels(layer)
    at = ", ".join(f"{v:.2f}" for v in levels)
    name = "gate " + layer.name.rsplit(" gate ", 1)[-1] if kind == "gate" else "uncertainty"
    if surface:
        what = f"{name}: surface at {at}"
    else:
        what = f"{name}: {'lines' if len(levels) > 1 else 'line'} at {at}"
    return f"{_coloured(LINE, rgba)}&nbsp;{html.escape(what)}"


def legend_html(layers) -> str:
    """The legend of the visible run layers in ``layers``: the topmost labels, each map."""
    visible = [layer for layer in layers if layer.visible]
    lines = []
    labels = [layer for layer in visible if is_run_labels(layer)]
    if labels:
        lines.append(labels_line(labels[-1]))
    for kind in ("gate", "uncertainty"):
        lines += [map_line(layer, kind) for layer in visible if map_kind(layer) == kind]
    return "<br>".join(lines)


class Legend(Label):
    """The legend, in the dock (empty, and hidden, before a run's layers are on the canvas)."""

    def __init__(self, viewer) -> None:
        super().__init__(name="legend", label="colours", value="", visible=False)
        from qtpy.QtCore import Qt, QTimer
        from qtpy.QtWidgets import QSizePolicy

        self.viewer = viewer
        self.native.setTextFormat(Qt.TextFormat.RichText)
        self.tooltip = TOOLTIP
        self.native.setWordWrap(True)
        self.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._timer = QTimer(self.native)  # deleted with the dock: no refresh after it closed
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.refresh)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved):
            emitter.connect(self._on_layers)
        viewer.dims.events.ndisplay.connect(self.schedule)
        for layer in viewer.layers:
            self._watch(layer)
        self.schedule()

    def _on_layers(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and getattr(event, "type", "") == "inserted":
            self._watch(layer)
        self.schedule()

    def _watch(self, layer) -> None:
        for name in WATCHED:
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(self.schedule)

    def schedule(self, event=None) -> None:
        """Refresh once the event loop turns (a run changes many properties at once)."""
        try:
            self._timer.start()
        except RuntimeError:  # the dock was closed
            return

    def refresh(self) -> None:
        text = legend_html(list(self.viewer.layers))
        self.value = text
        self.visible = bool(text)
        if text:
            native = self.native
            width = native.width() if native.width() > 50 else 250
            native.setMinimumHeight(native.heightForWidth(width))

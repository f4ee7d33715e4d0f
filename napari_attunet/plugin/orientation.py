"""Planes that read like a clinical viewer, for the scans this plugin opens.

The reader gives scans in LPS order: array (and world) axes (z, y, x) run along +S, +P, +L.
napari draws a plane's first displayed axis downwards and its second to the right, so rolling the
dims to a coronal or sagittal plane shows the head upside down. Whatever order the user reaches
(roll and transpose buttons, ``viewer.dims.order``), this module puts the plane upright:

- axial (P, L): anterior up, the patient's left on screen right (radiological);
- coronal (S, L): superior up, the patient's left on screen right;
- sagittal (S, P): superior up, anterior on the left;
- 3D: the LPS axes drawn with the handedness that shows the patient un-mirrored (at the start
  seen from the feet, like the axial plane).

In 2D, letters at the canvas edges name the patient's side each edge faces (A/P, R/L, S/I),
computed from the plane on screen and the camera's orientation, so they follow a roll, a
transpose or a flip; napari's scale bar (in mm, the layers' unit) is on. A single DICOM slice
opened as a 2D image gets the same, from its Image Orientation (Patient).
"""

from __future__ import annotations

import weakref

# Increasing index along each scan axis points this way (LPS).
AXIS_LABELS = ("superior", "posterior", "left")
# (towards increasing index, towards decreasing index) of each scan axis.
AXIS_LETTERS = (("S", "I"), ("P", "A"), ("L", "R"))
EDGES = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left", "right": "middle_right"}
LETTER_KEY = "attunet_orientation_{}"
_hooked: weakref.WeakSet = weakref.WeakSet()
_busy: set[int] = set()


def is_scan_layer(layer) -> bool:
    """A 3D scan opened by this plugin's reader (LPS axes)."""
    meta = getattr(layer, "metadata", None) or {}
    return "attunet_geometry" in meta and getattr(layer, "ndim", 0) == 3 and not getattr(layer, "rgb", False)


def install(viewer) -> None:
    """Keep ``viewer``'s planes upright while it shows a scan from this plugin (idempotent)."""
    if viewer is None or viewer in _hooked:
        return
    _hooked.add(viewer)
    ref = weakref.ref(viewer)

    def update(event=None):
        v = ref()
        if v is not None:
            apply(v)

    def letters(event=None):
        v = ref()
        if v is not None:
            show_letters(v)

    def sliders(event=None):
        v = ref()
        if v is not None:
            fit_slider_labels(v)

    events = viewer.dims.events
    for emitter in (events.order, events.ndisplay, events.ndim, events.axis_labels):
        emitter.connect(sliders)
    viewer.dims.events.order.connect(update)
    viewer.dims.events.ndisplay.connect(update)
    viewer.layers.events.inserted.connect(update)
    viewer.layers.events.removed.connect(letters)
    camera_of(viewer).events.orientation.connect(letters)
    apply(viewer)
    fit_slider_labels(viewer)


def clinical_order(order: tuple[int, ...], ndisplay: int, first_scan_axis: int) -> tuple[int, ...]:
    """``order`` with the displayed scan axes sorted (S before P before L), so that the vertical
    screen axis is the more superior/posterior one; other axes keep their place."""
    order = list(order)
    shown = order[-ndisplay:]
    scan = [a for a in shown if a >= first_scan_axis]
    if len(scan) < 2:
        return tuple(order)
    slots = [i for i, a in enumerate(shown) if a >= first_scan_axis]
    for slot, axis in zip(slots, sorted(scan), strict=True):
        shown[slot] = axis
    return tuple(order[:-ndisplay] + shown)


def camera_of(viewer):
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return viewer.camera if scene is None else scene.camera


def apply(viewer) -> None:
    """Set the dims order and camera orientation for the current plane (no-op without scans)."""
    if id(viewer) in _busy:
        return
    if not any(is_scan_layer(layer) for layer in viewer.layers):
        if any(slice_axes(layer) is not None for layer in viewer.layers):
            show_letters(viewer)  # a single slice: its letters and the scale bar, nothing to turn
            _scale_bar_on(viewer)
        return
    dims, camera = viewer.dims, camera_of(viewer)
    if dims.ndim < 3:
        return
    first = dims.ndim - 3  # scan axes are the last three world axes
    _busy.add(id(viewer))
    try:
        order = clinical_order(tuple(dims.order), dims.ndisplay, first)
        if order != tuple(dims.order):
            dims.order = order
        shown = order[-dims.ndisplay :]
        if dims.ndisplay == 2:
            vertical = shown[0]
            camera.orientation2d = ("up" if vertical == first else "down", "right")
        else:
            # (S, P, L) into the screen, down, right: a right-handed LPS, i.e. un-mirrored.
            camera.orientation = ("away", "down", "right")
        labels = list(dims.axis_labels)
        if tuple(labels[first:]) != AXIS_LABELS and tuple(labels[first:]) in (
            ("z", "y", "x"),
            (str(first), str(first + 1), str(first + 2)),
        ):
            labels[first:] = AXIS_LABELS
            dims.axis_labels = labels
    finally:
        _busy.discard(id(viewer))
    show_letters(viewer)
    _scale_bar_on(viewer)


def edge_letters(
    order: tuple[int, ...], orientation2d: tuple[str, str], first_scan_axis: int
) -> dict[str, str]:
    """The patient's side each canvas edge faces, for a 2D plane of a scan in LPS world axes:
    {"top": "A", "bottom": "P", "left": "R", "right": "L"} for the radiological axial plane.
    Edges along a non-scan axis get no letter."""

    def letters(axis: int) -> tuple[str, str] | None:
        k = axis - first_scan_axis
        return AXIS_LETTERS[k] if 0 <= k < 3 else None

    return _edges(order, orientation2d, letters)


def plane_letters(axes, order: tuple[int, ...], orientation2d: tuple[str, str]) -> dict[str, str]:
    """The same for a single DICOM slice opened as a 2D image: ``axes`` are the patient (LPS)
    directions of its two array axes (from Image Orientation (Patient)); an oblique axis is
    named by its largest component, as DICOM viewers do."""

    def letters(axis: int) -> tuple[str, str]:
        direction = [float(c) for c in axes[axis]]
        c = max(range(3), key=lambda i: abs(direction[i]))  # 0: L, 1: P, 2: S
        plus, minus = AXIS_LETTERS[2 - c]  # AXIS_LETTERS runs (S, P, L)
        return (plus, minus) if direction[c] > 0 else (minus, plus)

    return _edges(order, orientation2d, letters)


def _edges(order, orientation2d, letters_of) -> dict[str, str]:
    """napari draws the plane's first displayed axis vertically (increasing downwards when the
    camera's vertical orientation is "down") and its second horizontally (increasing to the
    right when "right"); ``letters_of(axis)`` is (towards increasing, towards decreasing)."""
    vertical, horizontal = order[-2:]
    out = {}
    for axis, (low_edge, high_edge), increasing in (
        (vertical, ("top", "bottom"), str(orientation2d[0]) == "down"),
        (horizontal, ("left", "right"), str(orientation2d[1]) == "right"),
    ):
        pair = letters_of(axis)
        if pair is None:
            continue
        plus, minus = pair
        out[high_edge], out[low_edge] = (plus, minus) if increasing else (minus, plus)
    return out


def slice_axes(layer):
    """The patient directions of a 2D slice layer's array axes (a single DICOM slice, kept by
    the reader in its geometry), or None."""
    meta = (getattr(layer, "metadata", None) or {}).get("attunet_geometry") or {}
    axes = ((meta.get("source") or {}).get("plane") or {}).get("axes")
    if getattr(layer, "ndim", 0) != 2 or not axes or len(axes) != 2:
        return None
    return axes


def _canvas_overlays(viewer):
    """napari >= 0.6 keeps canvas overlays in ``viewer.canvas.overlays``, earlier in ``_overlays``."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays if canvas is not None else viewer._overlays


def show_letters(viewer) -> dict[str, str]:
    """Put the orientation letters of the plane on screen at the canvas edges (hidden in 3D or
    without a scan from this plugin); returns them by edge."""
    from napari.components.overlays import TextOverlay

    dims = viewer.dims
    scans = [layer for layer in viewer.layers if is_scan_layer(layer)]
    letters = {}
    if scans and dims.ndisplay == 2 and dims.ndim >= 3:
        letters = edge_letters(tuple(dims.order), tuple(camera_of(viewer).orientation2d), dims.ndim - 3)
    elif dims.ndisplay == 2 and dims.ndim == 2:
        planes = [axes for axes in map(slice_axes, viewer.layers) if axes is not None]
        if planes:
            letters = plane_letters(planes[0], tuple(dims.order), tuple(camera_of(viewer).orientation2d))
    overlays = _canvas_overlays(viewer)
    for edge, position in EDGES.items():
        key = LETTER_KEY.format(edge)
        text = letters.get(edge, "")
        overlay = overlays.get(key)
        if overlay is None:
            if not text:
                continue
            overlay = TextOverlay(position=position, font_size=16, color="white", box=True)
            overlays[key] = overlay
        overlay.text = text
        overlay.visible = bool(text)
    return letters


def _scale_bar_on(viewer) -> None:
    """napari's scale bar, in the layers' unit (mm for scans), once a scan is shown."""
    bar = _canvas_overlays(viewer).get("scale_bar")
    if bar is not None and not bar.visible:
        bar.visible = True


# ---- the axis labels beside the sliders ("superior", "posterior", "left") ------------------


def fit_slider_labels(viewer) -> None:
    """Make each slider's axis label as wide as its text, now and whenever napari sizes it
    again (Qt calls napari's slot first; the dims events, after the event loop turns).

    napari caps a label at a fifth of its first slider's width; a slider never shown is 100 px
    wide, so a canvas that opens on another plane (the linked coronal and sagittal views)
    shows "p..." for "posterior"."""
    from qtpy.QtCore import QTimer

    for qt_dims in _qt_dims_of(viewer):
        fit = _fitter(qt_dims)
        for slider in qt_dims.slider_widgets:
            if not getattr(slider, "_attunet_fits", False):
                slider._attunet_fits = True
                slider.size_changed.connect(fit)
                slider.axis_label.textChanged.connect(fit)
        QTimer.singleShot(0, fit)


def _fitter(qt_dims):
    """A slot widening ``qt_dims``' axis labels to their longest shown text, with napari's
    margin (a space and an ellipsis); it holds the panel weakly."""
    ref = weakref.ref(qt_dims)

    def fit(*_) -> None:
        panel = ref()
        if panel is None:
            return
        try:
            sliders = list(panel.slider_widgets)
            shown = [s for s in sliders if not s.isHidden()] or sliders
            if not shown:
                return
            metrics = shown[0].axis_label.fontMetrics()
            need = max(metrics.horizontalAdvance(s.axis_label.text()) for s in shown)
            need += 4 * metrics.averageCharWidth()
            for slider in sliders:
                if slider.axis_label.minimumWidth() < need:
                    slider.axis_label.setFixedWidth(need)
        except RuntimeError:  # the canvas was closed
            return

    return fit


def _qt_dims_of(viewer) -> list:
    """The slider panels (napari's ``QtDims``) showing ``viewer``'s dims: the main window's
    and those of canvases docked beside it."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return []
    dims = viewer.dims
    return [w for w in app.allWidgets() if hasattr(w, "slider_widgets") and getattr(w, "dims", None) is dims]

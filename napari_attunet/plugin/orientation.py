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
"""

from __future__ import annotations

import weakref

# Increasing index along each scan axis points this way (LPS).
AXIS_LABELS = ("superior", "posterior", "left")
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

    viewer.dims.events.order.connect(update)
    viewer.dims.events.ndisplay.connect(update)
    viewer.layers.events.inserted.connect(update)
    apply(viewer)


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
    if id(viewer) in _busy or not any(is_scan_layer(layer) for layer in viewer.layers):
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

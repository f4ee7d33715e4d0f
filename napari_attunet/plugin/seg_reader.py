"""A DICOM SEG dropped into napari: a Labels layer where its frames lie.

Over its open series (an Image layer read from DICOM images with the SEG's frame of reference,
whose grid holds every SEG pixel) the layer takes that scan's grid and geometry, so it lands
voxel for voxel and saves again like a result of this plugin. Otherwise it gets a grid of its
own, built from its frames' plane positions.
"""

from __future__ import annotations

import numpy as np

from .transforms import GEOMETRY_KEY, data_to_world, display_kwargs, layer_state
from .writer import SEG_KEY


def is_seg(path) -> bool:
    from ..scans.dicom_seg import is_seg_file

    return is_seg_file(path)


def read_seg(path):
    """npe2 reader: the SEG as one Labels layer; a bad file is a notification, no layer."""
    import napari
    from napari.utils.notifications import show_error

    path = path[0] if isinstance(path, (list, tuple)) else path
    try:
        return [seg_layer(path, napari.current_viewer())]
    except ValueError as exc:
        show_error(str(exc))
    except Exception as exc:  # noqa: BLE001 - a notification, never a half-added layer
        show_error(f"{path}: could not be opened as a DICOM SEG ({type(exc).__name__}).")
    return [(None,)]


def seg_layer(path, viewer=None) -> tuple:
    """(labels, kwargs, "labels") of a SEG file, on its open series' grid when there is one."""
    from ..scans import dicom_seg

    dicom_seg.require_highdicom("Opening a DICOM SEG")
    seg = dicom_seg.read_seg(path)
    meta = {SEG_KEY: {"path": str(path), "names": seg.names, "type": seg.seg_type}}
    names = ["background", *seg.names]
    base = {
        "name": seg.path.stem,
        "features": {"index": list(range(len(names))), "class": names},
        "opacity": 0.5,
    }
    for layer in _scan_layers(viewer):
        geometry = layer.metadata[GEOMETRY_KEY]
        if not _same_frame_of_reference(geometry, seg.frame_of_reference):
            continue
        labels = dicom_seg.labels_on_grid(seg, data_to_world(layer_state(layer)), layer.data.shape)
        if labels is not None:
            kwargs = {
                **base,
                **_display(layer),
                "metadata": {GEOMETRY_KEY: geometry, **meta},
            }
            return labels, kwargs, "labels"
    volume = dicom_seg.seg_volume(seg)
    kwargs = {
        **base,
        **display_kwargs(volume.affine),
        "units": ("mm",) * 3,
        "metadata": {GEOMETRY_KEY: volume.geometry(), **meta},
    }
    return volume.array, kwargs, "labels"


def _scan_layers(viewer) -> list:
    from napari.layers import Image

    if viewer is None:
        return []
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Image) and GEOMETRY_KEY in layer.metadata and layer.data.ndim == 3
    ]


def _same_frame_of_reference(geometry: dict, uid: str) -> bool:
    from ..scans import dicom_seg

    try:
        source = dicom_seg.load_source(geometry)
    except ValueError:
        return False
    return str(source.datasets[0].FrameOfReferenceUID) == uid


def _display(layer) -> dict:
    out = {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}
    affine = np.asarray(layer.affine.affine_matrix)
    if not np.allclose(affine, np.eye(affine.shape[0])):
        out["affine"] = affine
    for key in ("units", "axis_labels"):
        if getattr(layer, key, None):
            out[key] = tuple(getattr(layer, key))
    return out

"""Writers: Labels and Image layers to NIfTI, NRRD or MHA, where the layer is shown; a Labels
layer over a DICOM series also to a DICOM SEG (``.dcm``).

The geometry comes from the layer's own world transform, so a mask painted by hand, a Preview
result or a layer from another plugin saves where napari draws it. When the layer lies on a
scan this plugin opened, the scan's file orientation and header are restored as well.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from ..scans import io
from .transforms import GEOMETRY_KEY, data_to_world


def _geometry(meta: dict, ndim: int) -> dict:
    kept = (meta.get("metadata") or {}).get(GEOMETRY_KEY) or {}
    return {"affine": data_to_world(meta, ndim).tolist(), "source": kept.get("source") or {}}


def write_layer(path: str, data, meta: dict) -> list[str]:
    """napari asked for this path (its save dialog confirms a replacement), so an existing file
    is replaced; the new one appears whole or not at all. A failure raises an OutputError,
    which napari shows, and never reports a fragment as saved."""
    from ..scans.outputs import OutputError

    array = np.asarray(data)
    try:
        out = io.write(path, array, _geometry(meta, array.ndim), overwrite=True)
    except OutputError as exc:
        # napari turns a ValueError from a writer into "not a valid writer"; an OSError
        # reaches the caller (and, from the Save dialog, the user as an error notification).
        raise OSError(str(exc)) from None
    return [str(out)]


# ---- DICOM SEG ---------------------------------------------------------------------------------

SEG_KEY = "attunet_seg"  # a Labels layer opened from a SEG: its segments' names


def write_seg(path: str, data, meta: dict) -> list[str]:
    """A Labels layer over a DICOM series as a DICOM SEG (``.dcm``), where the layer is shown.

    A result of this plugin names the checkpoint (AUTOMATIC segments; SEMIAUTOMATIC once painted
    on); any other Labels layer, such as one painted by hand, gives MANUAL segments. A layer
    that is not over a DICOM series, or a failure, is an OSError with one sentence (napari
    shows it; a ValueError would read "not a valid writer"); nothing partial is left."""
    from napari.utils.notifications import show_info

    from ..scans import dicom_seg

    array = np.asarray(data)
    metadata = meta.get("metadata") or {}
    algorithm, edited = _algorithm(metadata)
    try:
        dicom_seg.require_highdicom("Saving a DICOM SEG")
        out, notes = dicom_seg.write(
            path,
            array,
            _geometry(meta, array.ndim),
            _class_names(array, metadata),
            algorithm=algorithm,
            edited=edited,
            codes=algorithm.codes if algorithm else None,
            overwrite=True,
        )
    except ValueError as exc:
        raise OSError(str(exc)) from None
    for note in notes:
        show_info(f"{out.name}: {note}")
    return [str(out)]


def _class_names(array: np.ndarray, metadata: dict) -> list[str]:
    """Names of label values 0, 1, ...: the run's classes, a SEG's segments, else "label k"."""
    names = list((metadata.get("attunet") or {}).get("class_names") or [])
    names = names or ["background", *((metadata.get(SEG_KEY) or {}).get("names") or [])]
    top = int(array.max()) if array.size else 0
    return names + [f"label {k}" for k in range(len(names), top + 1)]


def _algorithm(metadata: dict):
    """(Algorithm or None for MANUAL, painted on since the run)."""
    from ..scans import dicom_seg

    run = metadata.get("attunet")
    if not run:
        return None, False
    checkpoint = run.get("checkpoint") or {}
    algorithm = dicom_seg.Algorithm(
        checkpoint.get("name", "unknown"),
        _sha256(checkpoint),
        checkpoint.get("version", ""),
        codes=checkpoint.get("codes"),
    )
    return algorithm, bool(run.get("painted"))


def tag_run(layer, model) -> None:
    """Name the checkpoint in a result layer's metadata (a SEG's algorithm identification; its
    sha256 is computed when a SEG is saved, not while the result lands) and mark the layer once
    it is painted on (its SEG segments become SEMIAUTOMATIC)."""
    from .. import __version__

    run = None if layer is None else layer.metadata.get("attunet")
    source = getattr(model, "source", None)
    if run is None or source is None:
        return
    try:
        stat = os.stat(source)
    except OSError:
        return
    run["checkpoint"] = {
        "path": str(source),
        "name": os.path.basename(str(source)),
        "stat": [stat.st_mtime_ns, stat.st_size],
        "version": __version__,
        "codes": (getattr(model, "metadata", None) or {}).get("class_codes"),
    }

    def painted(event=None) -> None:
        current = layer.metadata.get("attunet")
        if current is not None:
            current["painted"] = True

    layer.events.paint.connect(painted)


def _sha256(checkpoint: dict) -> str:
    """The sha256 of the run's checkpoint file, if it is still the file the run used."""
    path = checkpoint.get("path")
    if not path:  # a result this widget did not tag (a store run's layer)
        return "unknown"
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    if stat is None or [stat.st_mtime_ns, stat.st_size] != list(checkpoint.get("stat") or []):
        return "unknown (the checkpoint file changed or moved since the run)"
    return _sha256_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    from ..models.checkpoint import sha256

    return sha256(path)

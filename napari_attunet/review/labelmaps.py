"""Label maps to compare: from arrays, Volumes, Predictions, scan files and this project's
OME-Zarr result stores; checked (integer class values, within reason) and brought onto one grid.

A label map keeps the geometry it came with. Two maps on different grids are compared on the
prediction's: the reference is resampled there by nearest neighbour in world coordinates. Files
are read reoriented to one orientation (see ``io``), so a reference stored in another
orientation of the same grid lands voxel for voxel on the prediction, with no resampling.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

MAX_LABEL = 65534  # label maps hold class values; larger ones are a scan or an ID image
SAME_MM = 1e-3  # grids whose origin and spacing agree this closely (mm) are one grid


@dataclass
class LabelMap:
    """Integer labels in napari axis order, with what is known of their grid and classes.

    ``names[k]`` names label value k (0 is the background); ``direction`` is None where the
    source keeps no direction (a result store): the grid is then taken as axis-aligned.
    """

    array: np.ndarray
    name: str
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    direction: np.ndarray | None = None
    names: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def placed(self) -> bool:
        return self.spacing is not None and self.origin is not None

    def affine(self) -> np.ndarray:
        from ..scans.geometry import compose

        assert self.spacing is not None and self.origin is not None
        return compose(self.spacing, self.origin, self.direction)


def label_map(obj: Any, role: str) -> LabelMap:
    """A LabelMap from a path, a ``Volume``, a ``Prediction``, a LabelMap or an array;
    ``role`` ("the prediction", "the reference") names an array in messages."""
    if isinstance(obj, LabelMap):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return read(obj)
    if hasattr(obj, "label_names") and hasattr(obj, "quantized"):  # a Prediction (no torch here)
        spacing = tuple(float(s) for s in obj.spacing) if obj.spacing else None
        return LabelMap(obj.labels(), role, spacing=spacing, names=tuple(obj.label_names))
    if hasattr(obj, "array") and hasattr(obj, "spacing") and hasattr(obj, "direction"):  # a Volume
        path = (getattr(obj, "source", None) or {}).get("path")
        return _of_volume(obj, str(path) if path else role)
    return LabelMap(np.asarray(obj), role)


def read(path: str | os.PathLike) -> LabelMap:
    """A label map from a scan file or DICOM folder (``io.read``), a DICOM SEG or a result
    store."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / ".zattrs").is_file():
        return _read_store(path)
    from ..scans import dicom_seg, io

    if path.is_file() and dicom_seg.is_seg_file(path):
        return _read_seg(path)
    return _of_volume(io.read(path), str(path), _names_from_table(path))


def _of_volume(volume, name: str, names: tuple[str, ...] | None = None) -> LabelMap:
    """A scan's array as a label map, placed where the scan lies."""
    return LabelMap(
        volume.array,
        name,
        spacing=tuple(float(s) for s in volume.spacing),
        origin=tuple(float(o) for o in volume.origin),
        direction=np.asarray(volume.direction, dtype=float),
        names=names,
    )


def _read_seg(path: Path) -> LabelMap:
    """A DICOM SEG's segments as label values (segment k is label k), on the grid of its own
    frames, named by its segment labels."""
    from ..scans.dicom_seg import read_seg, seg_volume

    seg = read_seg(path)
    if seg.seg_type == "FRACTIONAL":
        raise InputError(
            f"{path} is a FRACTIONAL SEG (probabilities); evaluate a BINARY or LABELMAP SEG, or "
            "the labels file of the same run."
        )
    return _of_volume(seg_volume(seg), str(path), ("background", *seg.names))


def _read_store(path: Path) -> LabelMap:
    """The labels of a result store (``predict --format zarr``), or an NGFF image-label group."""
    try:
        attrs = json.loads((path / ".zattrs").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: its .zattrs cannot be read ({exc}); is the store whole?") from None
    group, names = path, None
    if "attunet" in attrs:
        meta = attrs["attunet"]
        classes = list(meta.get("class_names", []))
        names = tuple((["background"] + classes) if meta.get("output") == "sigmoid" else classes) or None
        group = path / "labels" / "attunet"
        try:
            attrs = json.loads((group / ".zattrs").read_text())
        except (OSError, ValueError):
            raise InputError(f"{path}: the store holds no labels (labels/attunet); is it whole?") from None
    elif "image-label" not in attrs:
        raise InputError(
            f"{path} is a zarr store but not a label store; give a result store of "
            "'napari-attunet predict --format zarr' or its labels/<name> group."
        )
    properties = attrs.get("image-label", {}).get("properties") or []
    if names is None and properties:
        by_value = {int(p["label-value"]): str(p.get("class", "")) for p in properties if "label-value" in p}
        if by_value:
            names = tuple(by_value.get(k, str(k)) for k in range(max(by_value) + 1))
    try:
        meta = attrs["multiscales"][0]
        dataset = meta["datasets"][0]
        array = _open_array(group / dataset["path"])
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{path}: its multiscales metadata is incomplete ({exc}).") from None
    scale, translation = None, None
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation":
            translation = [float(v) for v in t["translation"]]
    ndim = array.ndim
    spacing = tuple(scale[-ndim:]) if scale else None
    origin = tuple(translation[-ndim:]) if translation else (0.0,) * ndim
    return LabelMap(array, str(path), spacing=spacing, origin=origin if spacing else None, names=names)


def _open_array(where: Path) -> np.ndarray:
    import zarr

    try:
        return np.asarray(zarr.open_array(str(where), mode="r"))
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds; one sentence for all
        raise InputError(
            f"{where}: the label array cannot be read ({type(exc).__name__}); is the store whole?"
        ) from None


def _names_from_table(path: Path) -> tuple[str, ...] | None:
    """Class names of ``<name>_labels.<ext>`` written by ``predict``: its rows in the
    ``volumes.csv`` beside it, in label order."""
    from ..scans import io

    stem = io.stem(path)
    table = path.parent / "volumes.csv"
    if not stem.endswith("_labels") or not table.is_file():
        return None
    scan = stem[: -len("_labels")]
    try:
        with open(table, newline="") as fh:
            classes = [row["class"] for row in csv.DictReader(fh) if row.get("scan") == scan]
    except (OSError, KeyError, csv.Error):
        return None
    return ("background", *classes) if classes else None


def integer_labels(labels: LabelMap) -> LabelMap:
    """The same map with labels as uint8/uint16, or one InputError naming it: labels must be
    whole numbers from 0 to MAX_LABEL."""
    a = labels.array
    who = labels.name
    if a.dtype == bool:
        labels.array = a.view(np.uint8)
        return labels
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{who} holds {a.dtype} values; give a label map of integer class values.")
    if a.size == 0:
        raise InputError(f"{who} is empty (shape {a.shape}); give a label map.")
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            raise InputError(f"{who} holds NaN or infinite values; give a label map of integer class values.")
        fraction = a != np.floor(a)
        if fraction.any():
            example = float(a[fraction].flat[0])
            raise InputError(
                f"{who} holds non-integer values (such as {example:g}); give a label map of "
                "integer class values, not probabilities or a scan."
            )
    low, high = a.min(), a.max()
    if low < 0:
        raise InputError(
            f"{who} holds negative values (down to {_number(low)}); a label map holds class values "
            "0, 1, 2...: is it a scan?"
        )
    if high > MAX_LABEL:
        raise InputError(
            f"{who} holds huge label values (up to {_number(high)}); a label map holds class values "
            f"up to {MAX_LABEL}: is it a scan or an ID image?"
        )
    labels.array = a.astype(np.uint8 if high < 255 else np.uint16, copy=False)
    return labels


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


def check_classes(labels: LabelMap, names: tuple[str, ...], owner: str) -> None:
    """One InputError naming the value when ``labels`` holds a value that ``names`` (the
    prediction's classes) has no class for."""
    n = len(names)
    if int(labels.array.max(initial=0)) < n:
        return
    extra = np.unique(labels.array[labels.array >= n])
    shown = ", ".join(str(int(v)) for v in extra[:5]) + (", ..." if len(extra) > 5 else "")
    classes = ", ".join(f"{k} {name}" for k, name in enumerate(names) if k > 0)
    word = "value" if len(extra) == 1 else "values"
    raise InputError(
        f"{labels.name} holds label {word} {shown}, for which {owner} has no class (it has "
        f"{classes}); relabel it to those classes."
    )


def same_grid(a: LabelMap, b: LabelMap) -> bool:
    if a.array.shape != b.array.shape:
        return False
    if not (a.placed and b.placed):
        return True
    assert a.spacing and b.spacing and a.origin and b.origin
    if not np.allclose(a.spacing, b.spacing, atol=SAME_MM, rtol=0) or not np.allclose(
        a.origin, b.origin, atol=SAME_MM, rtol=0
    ):
        return False
    if a.direction is None or b.direction is None:
        return True
    return bool(np.allclose(a.direction, b.direction, atol=1e-4))


def onto(reference: LabelMap, prediction: LabelMap) -> tuple[np.ndarray, list[str]]:
    """The reference's labels on the prediction's grid, and a note when they were resampled."""
    if same_grid(reference, prediction):
        return reference.array, []
    if not (reference.placed and prediction.placed):
        unplaced = [m.name for m in (prediction, reference) if not m.placed]
        who = f"{unplaced[0]} carries" if len(unplaced) == 1 else "neither carries"
        raise InputError(
            f"{prediction.name} has shape {tuple(prediction.array.shape)} and {reference.name} "
            f"{tuple(reference.array.shape)}, and {who} a geometry to resample by; give files "
            "(or Volumes) with their geometry, or label maps of one shape."
        )
    from scipy import ndimage

    n = prediction.array.ndim
    to_reference = np.linalg.inv(reference.affine()) @ prediction.affine()
    array = ndimage.affine_transform(
        reference.array,
        to_reference[:n, :n],
        offset=to_reference[:n, n],
        output_shape=prediction.array.shape,
        order=0,
        mode="constant",
        cval=0,
    )
    ends = [[0, s - 1] for s in prediction.array.shape]
    corners = np.array(np.meshgrid(*ends, indexing="ij")).reshape(n, -1)
    where = to_reference[:n, :n] @ corners + to_reference[:n, n : n + 1]
    limit = np.array(reference.array.shape)[:, None] - 0.5
    covered = bool(((where >= -0.5) & (where <= limit)).all())
    note = (
        f"{reference.name} ({_grid(reference)}) is not on the grid of {prediction.name} "
        f"({_grid(prediction)}): it was resampled onto it by nearest neighbour in world coordinates"
        + ("." if covered else "; where it does not reach, it counts as background.")
    )
    return array, [note]


def _grid(labels: LabelMap) -> str:
    shape = "x".join(str(s) for s in labels.array.shape)
    assert labels.spacing is not None
    return f"{shape} voxels of {'x'.join(f'{s:g}' for s in labels.spacing)} mm"

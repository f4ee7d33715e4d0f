"""Per-class agreement of two label maps on one grid: Dice, HD95, ASSD and volumes, with MONAI's
conventions (see ``surface`` for the distances)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from . import surface

CSV_COLUMNS = ("class", "dice", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_ref_ml")


@dataclass(frozen=True)
class ClassMetrics:
    """One foreground class: ``name`` is its class name, or its label value as text."""

    label: int
    name: str
    dice: float
    hd95_mm: float
    assd_mm: float
    volume_pred_ml: float
    volume_ref_ml: float
    volume_diff_pct: float
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class Evaluation(list):
    """The rows of :func:`napari_attunet.evaluate` (a list of :class:`ClassMetrics`), with the
    notes that concern the whole comparison (a resampled reference, an assumed spacing)."""

    def __init__(self, rows: Sequence[ClassMetrics] = (), notes: Sequence[str] = ()):
        super().__init__(rows)
        self.notes: list[str] = list(notes)

    def row(self, key: int | str) -> ClassMetrics:
        """The row of a label value or a class name."""
        for r in self:
            if r.label == key or r.name == key:
                return r
        raise KeyError(key)


def dice(pred_voxels: int, ref_voxels: int, both: int) -> float:
    """2|P & R| / (|P| + |R|); 1 when both masks are empty."""
    total = pred_voxels + ref_voxels
    return 1.0 if total == 0 else 2.0 * both / total


def _counts(pred: np.ndarray, ref: np.ndarray, values: Sequence[int]) -> dict[int, tuple[int, int, int]]:
    """(prediction voxels, reference voxels, voxels in both) per label value."""
    if len(values) <= 16:  # a few passes per class beat bincount's cast of the volume to int64
        out = {}
        for value in values:
            a, b = pred == value, ref == value
            out[value] = (int(np.count_nonzero(a)), int(np.count_nonzero(b)), int(np.count_nonzero(a & b)))
        return out
    length = int(max(values)) + 1
    tables = [np.bincount(x.reshape(-1), minlength=length)[:length] for x in (pred, ref, pred[pred == ref])]
    return {v: tuple(int(t[v]) for t in tables) for v in values}  # type: ignore[misc]


def compare(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    values: Sequence[int] | None = None,
    names: Mapping[int, str] | None = None,
) -> list[ClassMetrics]:
    """One row per label value in ``values`` (default: every non-zero value found in either),
    for two integer label maps of one shape (values from 0 to 65534, background 0),
    ``spacing`` in mm per axis."""
    names = names or {}
    top = int(max([0, *(values or ()), int(pred.max(initial=0)), int(ref.max(initial=0))]))
    dtype = np.uint8 if top < 255 else np.uint16
    sentinel = int(np.iinfo(dtype).max)
    pred = pred.astype(dtype, copy=False)
    ref = ref.astype(dtype, copy=False)
    pad = surface.pad_width(spacing)
    pred_edges = surface.edges(pred, pad, sentinel)
    ref_edges = surface.edges(ref, pad, sentinel)
    if values is None:  # every class present has an edge voxel
        values = sorted(set(pred_edges.points) | set(ref_edges.points))
    counts = _counts(pred, ref, [int(v) for v in values])
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    rows = []
    for value in values:
        p, r, b = counts[int(value)]
        forward = surface.directed(pred_edges, ref_edges, value, spacing)
        backward = surface.directed(ref_edges, pred_edges, value, spacing)
        name = names.get(value) or str(value)
        rows.append(
            ClassMetrics(
                label=int(value),
                name=name,
                dice=dice(p, r, b),
                hd95_mm=surface.hd95(forward, backward),
                assd_mm=surface.assd(forward, backward),
                volume_pred_ml=p * voxel_ml,
                volume_ref_ml=r * voxel_ml,
                volume_diff_pct=100.0 * (p - r) / r if r else math.nan,
                note=_note(name, p, r),
            )
        )
    return rows


def _note(name: str, pred_voxels: int, ref_voxels: int) -> str:
    if pred_voxels and ref_voxels:
        return ""
    if not pred_voxels and not ref_voxels:
        return f"{name} is absent from both (Dice 1); HD95 and ASSD are undefined (NaN)."
    where = "the reference" if not ref_voxels else "the prediction"
    return f"{name} is absent from {where}; HD95 and ASSD are undefined (NaN)."

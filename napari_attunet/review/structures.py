"""Confidence per structure: for each class and each of its connected components (over a
minimum size), the volume, the mean uncertainty, the volume over the "uncertain over" level and
the centroid in world millimetres; a structure whose mean uncertainty is over that level is
flagged for a second look."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

STRUCTURE_COLUMNS = (
    "class",
    "component",
    "volume_ml",
    "mean_uncertainty",
    "uncertain_ml",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "flagged",
)
LEVEL = 0.5  # the widget's default "uncertain over"
MIN_ML = 0.1  # components smaller than this are counted in their class, not listed


@dataclass(frozen=True)
class Structure:
    """A class (``component`` 0: all its voxels) or one connected component of it (1, 2, ...
    by decreasing volume). ``centroid`` is in world mm in napari axis order (see ``geometry``:
    toward Superior, Posterior, Left)."""

    label: int
    name: str
    component: int
    voxels: int
    volume_ml: float
    mean_uncertainty: float
    uncertain_ml: float
    centroid: tuple[float, ...]
    flagged: bool

    def as_dict(self) -> dict:
        return asdict(self)


def structures(
    labels: np.ndarray,
    uncertainty: np.ndarray,
    spacing: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    affine: np.ndarray | None = None,
    level: float = LEVEL,
    min_ml: float = MIN_ML,
) -> list[Structure]:
    """One row per non-zero class present, each followed by its components of ``min_ml`` or
    more. ``names[k]`` names label value k; ``affine`` maps array index to world mm (default:
    the spacing from the origin); face-connected components, as ``--min-size`` counts them."""
    from scipy import ndimage

    labels = np.asarray(labels)
    uncertainty = np.asarray(uncertainty, dtype=np.float32)
    if labels.shape != uncertainty.shape:
        raise ValueError(f"labels {labels.shape} and uncertainty {uncertainty.shape} differ in shape")
    ndim = labels.ndim
    spacing = tuple(float(s) for s in (spacing or (1.0,) * ndim))
    if affine is None:
        affine = np.diag([*spacing, 1.0])
    voxel_ml = float(np.prod(spacing)) / 1000.0
    boxes = ndimage.find_objects(labels.astype(np.int32) if labels.dtype == bool else labels)
    rows: list[Structure] = []
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        name = names[value] if names is not None and value < len(names) else str(value)
        mask = labels[box] == value
        unc = uncertainty[box]
        parts, count = ndimage.label(mask)
        ids = np.arange(count + 1)
        voxels = np.bincount(parts.reshape(-1), minlength=count + 1)
        total = np.bincount(parts.reshape(-1), weights=unc.reshape(-1), minlength=count + 1)
        unsure = np.bincount(parts[unc > level], minlength=count + 1)
        place = _Placer(value, name, affine, np.array([s.start for s in box], dtype=float), voxel_ml, level)
        centre = ndimage.center_of_mass(mask)
        rows.append(place(0, int(voxels[1:].sum()), float(total[1:].sum()), int(unsure[1:].sum()), centre))
        big = ids[1:][voxels[1:] * voxel_ml >= min_ml]
        big = big[np.argsort(-voxels[big], kind="stable")]
        if not len(big):
            continue
        centres = ndimage.center_of_mass(mask, parts, big)
        for k, (part, c) in enumerate(zip(big, centres, strict=True), start=1):
            rows.append(place(k, int(voxels[part]), float(total[part]), int(unsure[part]), c))
    return rows


@dataclass(frozen=True)
class _Placer:
    """Makes the rows of one class: its crop's corner and the world transform."""

    value: int
    name: str
    affine: np.ndarray
    start: np.ndarray
    voxel_ml: float
    level: float

    def __call__(self, component: int, n: int, u_sum: float, u_count: int, centre) -> Structure:
        index = np.asarray(centre, dtype=float) + self.start
        world = self.affine @ np.append(index, 1.0)
        mean = u_sum / n if n else math.nan
        return Structure(
            self.value,
            self.name,
            component,
            n,
            n * self.voxel_ml,
            float(mean),
            u_count * self.voxel_ml,
            tuple(float(w) for w in world[: len(index)]),
            bool(mean > self.level),
        )


def csv_rows(rows: Sequence[Structure]) -> list[list[str]]:
    """``STRUCTURE_COLUMNS`` per row: the centroid as LPS patient coordinates (x toward Left,
    y toward Posterior, z toward Superior, as DICOM and ITK give them); ``component`` is
    ``all`` for a class's row."""
    out = []
    for r in rows:
        centroid = list(reversed(r.centroid)) + [math.nan] * (3 - len(r.centroid))
        out.append(
            [r.name, "all" if r.component == 0 else str(r.component), f"{r.volume_ml:.4f}"]
            + [f"{r.mean_uncertainty:.4f}", f"{r.uncertain_ml:.4f}"]
            + [f"{c:.2f}" for c in centroid]
            + ["yes" if r.flagged else "no"]
        )
    return out


def write_csv(target: str | os.PathLike, rows: Sequence[Structure]) -> None:
    """Write the table to ``target`` (a staged path: see ``outputs.Staging.write``)."""
    with open(Path(target), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(STRUCTURE_COLUMNS)
        writer.writerows(csv_rows(rows))

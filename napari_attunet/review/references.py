"""``predict SCANS -o OUT --reference REF_DIR``: each scan's reference found by its stem, the
metric columns of its rows in volumes.csv, and the mean and median per class over the run."""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .agreement import evaluate
from .labelmaps import LabelMap

# a reference is named as its scan, or with one of these after the stem
SUFFIXES = ("", "_labels", "_label", "_seg", "_segmentation", "_gt", "_mask", "_reference", "_ref")


def check_folder(folder: str | os.PathLike) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"--reference {folder}: no such folder; give the folder of reference label maps.")
    return path


def find(folder: str | os.PathLike, scan: str | os.PathLike, name: str) -> Path | None:
    """The reference of ``scan`` in ``folder``: a file (or DICOM folder) whose stem is the scan's
    stem or its output name, possibly followed by one of ``SUFFIXES``."""
    from ..scans import io

    stems = {io.stem(Path(scan).expanduser()), name}
    wanted = {s + suffix: k for k, suffix in enumerate(SUFFIXES) for s in stems}
    found = []
    for entry in sorted(Path(folder).expanduser().iterdir()):
        if entry.name.startswith("."):
            continue
        stem = entry.name if entry.is_dir() and not entry.name.endswith(".zarr") else io.stem(entry)
        if stem.endswith(".zarr"):
            stem = stem[: -len(".zarr")]
        if stem in wanted:
            found.append((wanted[stem], entry))
    if not found:
        return None
    found.sort(key=lambda item: item[0])
    best = [p for k, p in found if k == found[0][0]]
    if len(best) > 1:
        raise InputError(
            f"{folder} holds {len(best)} references for {scan} ({', '.join(p.name for p in best)}); keep one."
        )
    return best[0]


def scores(
    reference: Path, labels: np.ndarray, volume, names: Sequence[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """METRIC_COLUMNS cells per class name, and the notes, for one scan's labels (on the scan's
    grid) against its reference file."""
    prediction = LabelMap(
        labels,
        f"the labels of {volume.name}",
        spacing=tuple(float(s) for s in volume.spacing),
        origin=tuple(float(o) for o in volume.origin),
        direction=np.asarray(volume.direction, dtype=float),
    )
    rows = evaluate(prediction, reference, class_names=names)
    cells = {
        r.name: [_cell(r.dice, 6), _cell(r.hd95_mm, 4), _cell(r.assd_mm, 4), _cell(r.volume_ref_ml, 3)]
        for r in rows
    }
    return cells, rows.notes + [r.note for r in rows if r.note]


def _cell(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def summary(table: str | os.PathLike, paths: Sequence[str]) -> str | None:
    """Mean and median Dice, HD95 and ASSD per class over the rows of ``paths`` in volumes.csv
    that have them (NaN left out); None when none has."""
    try:
        with open(table, newline="") as fh:
            records = [r for r in csv.DictReader(fh) if r.get("path") in set(paths) and r.get("dice")]
    except OSError:
        return None
    if not records:
        return None
    classes = list(dict.fromkeys(r["class"] for r in records))
    lines: list[tuple[str, ...]] = [
        ("class", "scans", "Dice mean/median", "HD95 mm mean/median", "ASSD mm mean/median")
    ]
    for name in classes:
        mine = [r for r in records if r["class"] == name]
        cells = [name, str(len(mine))]
        for column, digits in (("dice", 4), ("hd95_mm", 2), ("assd_mm", 2)):
            values = [float(r[column]) for r in mine if not math.isnan(float(r[column]))]
            if values:
                cells.append(f"{statistics.mean(values):.{digits}f} / {statistics.median(values):.{digits}f}")
            else:
                cells.append("nan")
        lines.append(tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return f"against the references ({len({r['path'] for r in records})} scans):\n" + "\n".join(text)

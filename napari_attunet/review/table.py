"""The evaluation as a printed table and as a CSV file (written whole or not at all)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .metrics import CSV_COLUMNS, ClassMetrics

HEADERS = ("class", "Dice", "HD95 mm", "ASSD mm", "pred mL", "ref mL", "diff %")


def _number(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def text(rows: Sequence[ClassMetrics]) -> str:
    """The rows as aligned columns, one line per class."""
    body = [
        (
            r.name,
            _number(r.dice, 4),
            _number(r.hd95_mm, 2),
            _number(r.assd_mm, 2),
            _number(r.volume_pred_ml, 2),
            _number(r.volume_ref_ml, 2),
            _number(r.volume_diff_pct, 1),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [HEADERS, *body]) for i in range(len(HEADERS))]
    lines = []
    for line in [HEADERS, *body]:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def csv_rows(rows: Sequence[ClassMetrics]) -> list[list[str]]:
    """``CSV_COLUMNS`` per class: full precision (repr of the float), NaN as ``nan``."""
    return [
        [r.name] + [repr(float(v)) for v in (r.dice, r.hd95_mm, r.assd_mm, r.volume_pred_ml, r.volume_ref_ml)]
        for r in rows
    ]


def check_csv(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a CSV destination before any work: an existing file without ``overwrite``, a
    folder, or a folder that cannot be written."""
    from ..scans import outputs

    path = Path(path).expanduser()
    outputs.check_target(path, overwrite)
    outputs.check_folder(path.parent, "--csv")
    return path


def write_csv(path: str | os.PathLike, rows: Sequence[ClassMetrics], overwrite: bool = False) -> Path:
    """The table as CSV, appearing whole or not at all; an existing file is replaced only with
    ``overwrite`` (see ``outputs``)."""
    from ..scans import outputs

    path = check_csv(path, overwrite)
    table = csv_rows(rows)

    def write(target: Path) -> None:
        with open(target, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(table)

    def verify(target: Path) -> None:
        with open(target, newline="") as fh:
            if sum(1 for _ in csv.reader(fh)) != 1 + len(table):
                raise OSError(5, "the table did not read back whole")

    with outputs.staged(path.parent, overwrite) as stage:
        stage.write(path.name, write, verify)
    return path

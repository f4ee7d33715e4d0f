"""Worst world error (mm) of each odd DICOM case, against pydicom, for one checkout's io.read.

    cd <checkout> && python bench/dicom_world_error.py [path/to/checkout]

Imports ``napari_attunet`` from the checkout given (default: this one), so the same cases can be
measured on main before a change and on a branch after it. Synthetic cases have marker voxels
(error: marker to the centroid of its blob); real pydicom files are sampled at corners and random
pixels (error: pydicom's point to the volume voxel holding pydicom's value there).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

here = Path(__file__).resolve().parent.parent
checkout = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else here
sys.path.insert(0, str(checkout))
sys.path.insert(1, str(here / "tests"))
warnings.simplefilter("ignore")

import dicom_oracle as oracle  # noqa: E402
import numpy as np  # noqa: E402

from napari_attunet import io  # noqa: E402


def cases(tmp: Path):
    data = oracle.DATA
    files = lambda folder: sorted(folder.glob("*.dcm"))
    axial = files(data / "axial")
    yield "axial series (shuffled instances, implicit VR)", data / "axial", axial, None
    yield "series with a missing slice", data / "gap", files(data / "gap"), None
    yield "uneven spacing (2 mm then 3 mm)", data / "uneven", files(data / "uneven"), None
    dup = files(data / "duplicate")
    yield "duplicate slice position", data / "duplicate", dup[:-1], None
    yield (
        "corrupt slice in the folder",
        oracle.folder_with_corrupt_slice(tmp),
        [p for p in axial if p.name != "IM0003.dcm"],
        None,
    )
    yield (
        "foreign files (RT dose, SEG, SR, DICOMDIR, truncated, text)",
        oracle.folder_with_foreign_files(tmp),
        axial,
        None,
    )
    yield "gantry tilt 25 deg", data / "tilt", files(data / "tilt"), None
    yield "oblique series (20/-15/30 deg)", data / "oblique", files(data / "oblique"), None
    yield (
        "enhanced CT multi-frame (built, oblique)",
        data / "enhanced_ct.dcm",
        [data / "enhanced_ct.dcm"],
        None,
    )
    yield (
        "enhanced CT multi-frame (pydicom eCT_Supplemental)",
        oracle.single_file(tmp, "eCT_Supplemental.dcm"),
        None,
        "sample",
    )
    yield "single sagittal slice (built)", data / "sagittal", files(data / "sagittal"), None
    yield "single coronal slice (built)", data / "coronal", files(data / "coronal"), None
    yield (
        "single sagittal slice stored transposed",
        data / "sagittal_flipped",
        files(data / "sagittal_flipped"),
        None,
    )
    yield "single axial slice (pydicom CT_small)", oracle.single_file(tmp, "CT_small.dcm"), None, "sample"
    yield (
        "single oblique sagittal 1024^2 (pydicom MR2_UNCR)",
        oracle.single_file(tmp, "MR2_UNCR.dcm"),
        None,
        "sample",
    )
    yield (
        "single tilted axial J2K (pydicom J2K_pixelrep_mismatch)",
        oracle.single_file(tmp, "J2K_pixelrep_mismatch.dcm"),
        None,
        "sample",
    )


def measure(path, expected, mode) -> tuple[str, str, str]:
    try:
        volume = io.read(path)
    except ValueError as exc:
        return "refused", "-", str(exc)
    if mode == "sample":
        errors = oracle.sample_errors(volume, path)
    else:
        errors = oracle.marker_errors(volume, oracle.markers(expected))
    worst = float(np.max(errors))
    shape = "x".join(str(s) for s in volume.array.shape)
    text = f"{worst:.4f}" if np.isfinite(worst) else "wrong voxel"
    return text, shape, " / ".join(volume.notes) or "(nothing)"


def main() -> None:
    print(f"checkout: {checkout}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, expected, mode in cases(Path(tmp)):
            worst, shape, told = measure(path, expected, mode)
            told = told.replace(str(tmp), "<tmp>")
            print(f"| {name} | {worst} | {shape} | {told} |")


if __name__ == "__main__":
    main()

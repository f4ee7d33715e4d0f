"""Worst world error (mm) of NIfTI scans and saved masks against nibabel, per kind of odd file.

    python bench/nifti_world_error.py [REPO]

REPO (default: this checkout) is put first on sys.path, so an older checkout of the project can be
measured the same way (git worktree add /tmp/old <commit>; python bench/nifti_world_error.py /tmp/old).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
REPO = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(HERE / "tests"))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import test_world_geometry as T  # noqa: E402


def reading(folder: Path) -> dict:
    out = {}
    for angle in (0.9, 9.0, 35.0):
        path = folder / f"oblique{angle}.nii.gz"
        nib.save(nib.Nifti1Image(T.unique_volume((20, 16, 12)), T.oblique_affine(angle)), path)
        out[f"oblique {angle} degrees"] = T.world_error(T.open_layer(path), nib.load(path))
    real = nib.load(T.NIB_DATA / "anatomical.nii")
    image = nib.Nifti1Image(T.unique_volume(real.shape), real.affine)
    qform = real.affine.copy()
    qform[:3, 3] += [13.5, 0.0, 0.0]
    image.set_qform(qform, code=1)
    image.set_sform(real.affine, code=2)
    path = folder / "sq.nii.gz"
    nib.save(image, path)
    out["sform != qform (13.5 mm apart)"] = T.world_error(T.open_layer(path), nib.load(path))
    path = T.with_unique_values(
        nib.load(T.NIB_DATA / "example_nifti2.nii.gz"), folder / "n2.nii.gz", cls=nib.Nifti2Image
    )
    try:
        out["NIfTI-2"] = T.world_error(T.open_layer(path), nib.load(path))
    except Exception as exc:  # the old reader refused it
        out["NIfTI-2"] = f"not opened ({type(exc).__name__})"
    return out


def painted_mask(folder: Path) -> float:
    """A labels layer on the oblique scan's grid, saved by the plugin writer, read by nibabel:
    the worst distance between a mask voxel and the scan voxel it was painted on."""
    from napari.layers import Labels

    from napari_attunet.plugin.writer import write_layer

    path = folder / "oblique_paint.nii.gz"
    nib.save(nib.Nifti1Image(T.unique_volume((24, 20, 16)), T.oblique_affine(30.0)), path)
    scan = T.open_layer(path)
    state = scan.as_layer_data_tuple()[1]
    labels = Labels(
        np.zeros(scan.data.shape, np.uint8),
        scale=state["scale"],
        translate=state["translate"],
        rotate=state["rotate"],
        shear=state["shear"],
        affine=state["affine"],
    )  # what napari's New labels layer copies
    painted = T.sample_indices(scan.data.shape, n=10)
    for p in painted:
        labels.data[p] = 1
    out = folder / "painted.nii.gz"
    write_layer(str(out), labels.data, labels.as_layer_data_tuple()[1])
    written, reference = nib.load(out), nib.load(path)
    values = np.asarray(reference.dataobj)
    worst = 0.0
    for p in painted:
        k = np.argwhere(values == scan.data[p])[0]
        world_scan = reference.affine @ np.array([*k, 1.0])
        # the mask voxel nearest to that point must be painted; distance to its centre
        index = np.linalg.solve(written.affine, world_scan)[:3]
        nearest = np.round(index).astype(int)
        inside = all(0 <= n < s for n, s in zip(nearest, written.shape, strict=True))
        hit = inside and np.asarray(written.dataobj)[tuple(nearest)] == 1
        error = np.abs(written.affine[:3, :3] @ (index - nearest)).max() if hit else np.inf
        worst = max(worst, float(error))
    return worst


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    print(f"napari-attunet at {REPO}")
    for name, value in reading(folder).items():
        print(f"{name:34s} {value if isinstance(value, str) else f'{value:.3f} mm'}")
    error = painted_mask(folder)
    print(
        f"{'mask painted on an oblique scan':34s} "
        f"{'a painted voxel is missing or elsewhere' if np.isinf(error) else f'{error:.3f} mm'}"
    )


if __name__ == "__main__":
    main()

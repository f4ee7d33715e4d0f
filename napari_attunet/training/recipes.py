"""Training recipes. ``mni152``: background / grey matter / white matter on nilearn's MNI ICBM152
2009a T1 template at 2 mm, the data of the bundled demo checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..inference.preprocess import Normalization, normalize
from .data import Case

MNI_CLASSES = ["background", "grey matter", "white matter"]
MNI_SPACING = 2.0
MNI_NORMALIZATION = {"mode": "zscore"}


def _nilearn_data() -> Path:
    try:
        import nilearn
    except ImportError as exc:
        raise InputError("the mni152 recipe needs nilearn: pip install 'napari-attunet[recipes]'") from exc
    return Path(nilearn.__file__).parent / "datasets" / "data"


def mni152_volumes(spacing: float = MNI_SPACING):
    """(T1 image, labels) as SimpleITK images on a ``spacing`` mm grid.

    Labels are the most probable of background (1 - GM - WM, CSF included), grey matter and
    white matter, from the template's probability maps resampled linearly to the same grid.
    """
    import SimpleITK as sitk

    folder = _nilearn_data()
    read = {
        k: sitk.ReadImage(
            str(folder / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32
        )
        for k in ("t1", "gm", "wm")
    }
    ref = read["t1"]
    size = [int(round(n * s / spacing)) for n, s in zip(ref.GetSize(), ref.GetSpacing(), strict=True)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing((spacing,) * 3)
    grid.SetOrigin(ref.GetOrigin())
    grid.SetDirection(ref.GetDirection())
    resampled = {k: sitk.Resample(v, grid, sitk.Transform(), sitk.sitkLinear, 0.0) for k, v in read.items()}
    gm = sitk.GetArrayFromImage(resampled["gm"]) / 255.0
    wm = sitk.GetArrayFromImage(resampled["wm"]) / 255.0
    background = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = np.argmax(np.stack([background, gm, wm]), 0).astype(np.uint8)
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(grid)
    t1 = sitk.Cast(sitk.Clamp(resampled["t1"], lowerBound=0, upperBound=255), sitk.sitkUInt8)
    return t1, label_image


def mni152_cases(export: Path | None = None) -> tuple[list[Case], dict]:
    """The one training volume, and a summary of it; optionally written out as NIfTI."""
    import SimpleITK as sitk

    from ..scans.io import read

    t1, labels = mni152_volumes()
    if export is not None:
        export.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(t1, str(export / "mni152_t1_2mm.nii.gz"), True)
        sitk.WriteImage(labels, str(export / "mni152_gmwm_labels_2mm.nii.gz"), True)
        volume = read(export / "mni152_t1_2mm.nii.gz")
        label_array = read(export / "mni152_gmwm_labels_2mm.nii.gz").array
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            sitk.WriteImage(t1, f"{tmp}/t1.nii.gz")
            sitk.WriteImage(labels, f"{tmp}/labels.nii.gz")
            volume, label_array = read(f"{tmp}/t1.nii.gz"), read(f"{tmp}/labels.nii.gz").array
    image = normalize(volume.array, Normalization.parse(MNI_NORMALIZATION))[None]
    case = Case("mni152_t1_2mm", image, label_array.astype(np.int64), volume.spacing, volume)
    counts = np.bincount(label_array.reshape(-1), minlength=3)
    summary = {
        "recipe": "mni152",
        "source": "nilearn MNI ICBM152 2009a (sym) T1, GM and WM maps",
        "spacing_mm": list(volume.spacing),
        "shape": list(volume.array.shape),
        "voxels_per_class": {n: int(c) for n, c in zip(MNI_CLASSES, counts, strict=True)},
        "note": "one template; validation Dice is measured on the same volume",
    }
    return [case], summary

"""Display windows (contrast limits) by modality, and the CT presets.

- DICOM: the file's Modality tag decides (CT gets a CT window, anything else percentiles).
- NIfTI, NRRD, MHA (no modality on file): a scan is CT when its content says so: a share of its
  voxels is air (about -1000 HU) and its values lie on the CT scale [-1024, 3071] (a padding
  value below -1024 outside the scanner's field of view, such as -2048 or -3024, is allowed).
  A min/max rule is fooled by MR: nibabel's ``anatomical.nii`` spans -610..30393.
- MR and unknown modalities: the 0.5-99.5 percentile window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (low, high) of each CT window in HU: level -/+ width / 2.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (-160.0, 240.0),  # W400 L40
    "lung": (-1350.0, 150.0),  # W1500 L-600
    "bone": (-450.0, 1050.0),  # W1500 L300
    "brain": (0.0, 80.0),  # W80 L40
}
CT_DEFAULT = "soft tissue"
WINDOW_KEY = "attunet_window"  # layer metadata: {"modality": ..., "window": ...}

CT_RANGE = (-1024.0, 3071.0)  # 12-bit CT numbers
AIR = (-1100.0, -900.0)
AIR_SHARE = 0.01  # of the non-padding voxels
PERCENTILES = (0.5, 99.5)
_SAMPLE = 1_000_000


def _sample(array: np.ndarray) -> np.ndarray:
    """About a million voxels spread over the whole volume, finite ones only, as float."""
    flat = np.asarray(array).reshape(-1)
    sample = flat[:: max(1, flat.size // _SAMPLE)]
    if np.issubdtype(sample.dtype, np.floating):
        sample = sample[np.isfinite(sample)]
    return sample.astype(np.float64, copy=False)


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether voxel values read as Hounsfield units: some air near -1000 HU, and the rest on
    the CT scale (one padding value below -1024 allowed, metal in under 0.1 % of the voxels)."""
    sample = _sample(array)
    if sample.size == 0:
        return False
    low = sample.min()
    if low < CT_RANGE[0]:
        sample = sample[sample != low]  # padding outside the field of view
        if sample.size == 0 or sample.min() < CT_RANGE[0] - 100:
            return False
    air = np.count_nonzero((sample >= AIR[0]) & (sample <= AIR[1])) / sample.size
    top = float(np.percentile(sample, 99.9))
    return air >= AIR_SHARE and top <= CT_RANGE[1]


def percentile_window(array: np.ndarray) -> tuple[float, float]:
    """The 0.5-99.5 percentile window (min..max when that collapses; (0, 1) with no values)."""
    sample = _sample(array)
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(sample, PERCENTILES))
    if hi > lo:
        return (lo, hi)
    lo, hi = float(sample.min()), float(sample.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def dicom_modality(path: str | Path) -> str | None:
    """The Modality (0008,0060) of a DICOM file, or of the first DICOM file of a folder."""
    from ..scans import dicom, dicom_tags

    path = Path(path)
    if path.is_dir():
        try:
            path = next(p for p in sorted(path.iterdir()) if p.is_file() and dicom.is_dicom_file(p))
        except (StopIteration, OSError):
            return None
    elif not dicom.is_dicom_file(path):
        return None
    try:
        _, dataset = dicom_tags.read_dataset(path)
    except (OSError, ValueError):
        return None
    return dicom_tags.text(dataset.get((0x0008, 0x0060))).strip().upper() or None


def modality_of(path: str | Path, array: np.ndarray) -> str:
    """The modality: "CT", "MR" or another DICOM Modality, or "unknown" (content not CT)."""
    tag = dicom_modality(path)
    if tag is not None:
        return tag
    return "CT" if looks_like_ct(array) else "unknown"


def initial_window(path: str | Path, array: np.ndarray) -> tuple[tuple[float, float], dict]:
    """Contrast limits for a scan opened from ``path``, and what they came from (metadata)."""
    modality = modality_of(path, array)
    sample = _sample(array)
    values = [float(sample.min()), float(sample.max())] if sample.size else [0.0, 1.0]
    if modality == "CT":
        return CT_WINDOWS[CT_DEFAULT], {"modality": modality, "window": CT_DEFAULT, "values": values}
    window = {"modality": modality, "window": "percentile 0.5-99.5", "values": values}
    return percentile_window(array), window


def widen_slider(event) -> None:
    """napari limits the contrast slider to the window a layer opens with; let it reach the
    scan's whole range of values (layers-inserted hook, for layers from the reader)."""
    from napari.layers import Image

    layer = event.value
    meta = (getattr(layer, "metadata", None) or {}).get(WINDOW_KEY) or {}
    if not isinstance(layer, Image) or "values" not in meta or layer.rgb:
        return
    limits = tuple(layer.contrast_limits)
    low, high = meta["values"]
    wanted = [min(low, limits[0]), max(high, limits[1])]
    if list(layer.contrast_limits_range) != wanted:
        layer.contrast_limits_range = wanted
        layer.contrast_limits = limits


def apply_window(layer, name: str) -> None:
    """Give an Image layer a CT preset, or (``"percentile"``) its 0.5-99.5 percentile window."""
    if name == "percentile":
        limits = percentile_window(np.asarray(layer.data))
        label = "percentile 0.5-99.5"
    else:
        limits = CT_WINDOWS[name]
        label = name
    lo, hi = layer.contrast_limits_range
    if limits[0] < lo or limits[1] > hi:  # let the window reach past the data's range
        layer.contrast_limits_range = (min(lo, limits[0]), max(hi, limits[1]))
    layer.contrast_limits = limits
    layer.metadata = {**layer.metadata, WINDOW_KEY: {**layer.metadata.get(WINDOW_KEY, {}), "window": label}}

"""DICOM Segmentation (SEG) objects out of a DICOM series, written with highdicom.

A SEG is the DICOM way to store a segmentation next to the images it was made on: PACS, OHIF and
3D Slicer's DICOM module open it over its series. This module turns a label array on the grid of
a scan read from a DICOM series (``io.read``) into a Segmentation Storage object
(SOP Class 1.2.840.10008.5.1.4.1.1.66.4):

- it references every instance of the series the scan was read from (the same files the reader
  chose, localizers left out), shares its StudyInstanceUID and FrameOfReferenceUID, and copies the
  patient and study attributes (an attribute the source lacks stays empty: nothing is invented);
- one segment per foreground class, labelled with the class name (segment number = label value),
  with a generic category and type code (Tissue, SNOMED CT 85756007) unless the checkpoint's
  metadata names codes for the class (``class_codes``);
- a prediction's segments are AUTOMATIC with the algorithm named (napari-attunet, its version, the
  checkpoint file's name and sha256); a mask painted by hand is MANUAL;
- BINARY by default, LABELMAP (one frame stack holding label values, DICOM 2024, highdicom >= 0.24)
  or FRACTIONAL PROBABILITY (from class probabilities, 0..255).

Geometry. Each frame is placed explicitly (its own ImagePositionPatient, the series'
ImageOrientationPatient and pixel spacing); highdicom then never has to guess frame order from
``source_images`` (its issue #330). The label grid is brought back to the series' own axes (rows,
columns, slice normal) by axis swaps and flips only; where a frame lies on a source slice (within
1 % of the slice step, the reader's own tolerance for a uniform series) it takes that slice's
ImagePositionPatient exactly, so it references that instance. A series the reader resampled (a
gap, uneven spacing, a gantry tilt) is written on the reader's uniform grid, each frame with its
own plane position: this is exactly what the Labels layer shows, and no label is moved or
interpolated a second time. Such frames do not all coincide with source slices, so they carry no
per-frame source reference (the series is still referenced as a whole), and a note says so.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation Storage (2024)
SEG_TYPES = ("binary", "labelmap", "fractional")
DEFAULT_CODE = "SCT:85756007:Tissue"
REQUIRED_UIDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
)
# type 2 attributes highdicom reads from the source: absent ones are copied as empty, never made up
TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
AXIS_TOLERANCE = 1e-4  # 1 - |cos| between a label axis and a series axis (about 0.8 degrees)
NEEDS_DICOM = "a DICOM SEG needs the source DICOM images; save as NIfTI (.nii.gz), or open the DICOM series"


@dataclass(frozen=True)
class Algorithm:
    """What made the segments: written as the AlgorithmIdentificationSequence."""

    checkpoint: str
    sha256: str
    version: str = ""
    name: str = "napari-attunet"
    codes: dict | None = None  # class name -> {"category": CODE, "type": CODE} (checkpoint metadata)

    @classmethod
    def of_checkpoint(cls, path: str | os.PathLike) -> Algorithm:
        """The algorithm of a checkpoint file: its name and sha256, with this tool's version, and
        the class codes stored in its metadata (native .safetensors only)."""
        from .. import __version__
        from ..models.checkpoint import read_checkpoint, sha256

        codes = None
        if str(path).lower().endswith(".safetensors"):
            codes = (read_checkpoint(path).metadata or {}).get("class_codes")
        return cls(Path(path).name, sha256(path), __version__, codes=codes)


@dataclass
class Source:
    """The series a scan was read from: its datasets (no pixel data) and its axes."""

    path: Path
    datasets: list
    frame: np.ndarray  # rows: r (along a row), c (down a column), n = r x c; LPS
    positions: np.ndarray  # (slices, 3) ImagePositionPatient of every placed frame or file
    step: float  # the slice step along n (mm), or the thickness of a single slice


@dataclass
class Placement:
    """How a label array (napari axis order) becomes SEG frames: axes permuted and flipped
    into (frames along n, rows along c, columns along r)."""

    order: tuple[int, ...]
    flips: tuple[int, ...]
    origin: np.ndarray  # LPS position of pixel (0, 0) of frame 0
    step: float
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM's PixelSpacing
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    positions: list[np.ndarray] = field(default_factory=list)
    snapped: int = 0  # frames placed exactly on a source slice

    def apply(self, array: np.ndarray) -> np.ndarray:
        """A spatial array (napari order, 2D or 3D) as (frames, rows, columns)."""
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[None]
        out = np.transpose(array, self.order)
        for axis in self.flips:
            out = np.flip(out, axis)
        return np.ascontiguousarray(out)


# ---- the source series -----------------------------------------------------------------------


def is_dicom_source(path: str | os.PathLike | None) -> bool:
    """Whether a scan path is a DICOM folder or file (the only sources a SEG can refer to)."""
    from . import dicom

    if not path:
        return False
    path = Path(path).expanduser()
    return path.is_dir() or (path.is_file() and dicom.is_dicom_file(path))


def check_scan(path: str | os.PathLike) -> Source:
    """The source series of a scan, read before any work: an InputError for a scan that is not
    DICOM (a SEG refers to DICOM images) or lacks what a SEG must share with it."""
    if not is_dicom_source(path):
        raise InputError(f"{path} is not a DICOM series: {NEEDS_DICOM}.")
    return load_source({"source": {"path": str(path)}})


def _geometry(like) -> dict:
    from .io import Volume

    return like.geometry() if isinstance(like, Volume) else dict(like or {})


def load_source(like) -> Source:
    """The source series of a Volume or a layer's geometry dict; an InputError when there is none
    or it lacks what a SEG must share with it."""
    from . import dicom

    geometry = _geometry(like)
    source = geometry.get("source") or {}
    given = source.get("path")
    if not given or not is_dicom_source(given):
        where = f"{given}" if given else "this layer"
        raise InputError(f"{where} was not read from DICOM images: {NEEDS_DICOM}.")
    path = Path(given)
    placed = dicom.placed_slices(path)
    if placed is None:
        raise InputError(
            f"{path}: the images have no patient position or orientation, so a DICOM SEG "
            "cannot be placed on them; save as NIfTI (.nii.gz) instead."
        )
    slices, frame = placed
    kept = list(dict.fromkeys(s.path for s in slices))
    datasets = [_read_header(p) for p in kept]
    _check_uids(datasets, kept, path)
    positions = np.array([s.position for s in slices])
    depth = np.sort(positions @ frame[2])
    steps = np.diff(depth)
    steps = steps[steps > dicom.DUPLICATE_MM]
    if steps.size:
        step = float(np.min(steps))
    else:
        step = float(getattr(datasets[0], "SliceThickness", 0) or 1.0)
    return Source(path, datasets, frame, positions, step)


def _read_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as DICOM ({exc}); copy it again.") from None


def _check_uids(datasets: list, paths: list[Path], folder: Path) -> None:
    for ds, p in zip(datasets, paths, strict=True):
        missing = [key for key in REQUIRED_UIDS if not str(getattr(ds, key, "") or "").strip()]
        if missing:
            raise InputError(
                f"{folder}: {p.name} has no {' or '.join(missing)}; a DICOM SEG must "
                "refer to its images by these UIDs and share their study and frame of "
                "reference, so none was written; save as NIfTI (.nii.gz) instead."
            )
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    frames = {str(ds.FrameOfReferenceUID) for ds in datasets}
    if len(frames) > 1 or len(series) > 1:
        raise InputError(
            f"{folder}: the images do not share one series and frame of reference "
            f"({len(series)} series, {len(frames)} frames of reference); a DICOM SEG "
            "needs one; save as NIfTI (.nii.gz) instead."
        )


# ---- geometry --------------------------------------------------------------------------------


def _index_to_lps(geometry: dict, shape: Sequence[int]) -> np.ndarray:
    """3 x 4 matrix: array index (napari order; a 2D array as one frame) -> LPS point (x, y, z)."""
    affine = np.asarray(geometry.get("affine"), dtype=float)
    if len(shape) == 3:
        if affine.shape != (4, 4):
            raise InputError("the labels have no 3D placement; they cannot be written as a DICOM SEG.")
        return affine[:3][::-1]  # napari world (S, P, L) -> LPS (x, y, z)
    plane = (geometry.get("source") or {}).get("plane")
    if len(shape) != 2 or affine.shape != (3, 3) or not plane:
        raise InputError(
            "the labels are not a 2D slice or 3D volume placed in the patient; they cannot be "
            "written as a DICOM SEG."
        )
    axes = np.asarray(plane["axes"], dtype=float)  # LPS direction of the 2D image's axes
    origin = np.asarray(plane["origin"], dtype=float)
    base = origin - (origin @ axes[0]) * axes[0] - (origin @ axes[1]) * axes[1]
    out = np.zeros((3, 4))
    out[:, 0] = np.cross(axes[0], axes[1])  # the one frame: a unit step along the normal
    out[:, 1] = axes.T @ affine[:2, 0]
    out[:, 2] = axes.T @ affine[:2, 1]
    out[:, 3] = base + axes.T @ affine[:2, 2]
    return out


def placement(shape: Sequence[int], like, source: Source) -> Placement:
    """Where the frames of a label array of ``shape`` lie, in the series' own axes."""
    geometry = _geometry(like)
    matrix = _index_to_lps(geometry, shape)
    shape3 = tuple(shape) if len(shape) == 3 else (1, *shape)
    targets = source.frame[[2, 1, 0]]  # frames along n, rows along c, columns along r
    order = [0, 0, 0]
    signs = [1.0, 1.0, 1.0]
    lengths = np.linalg.norm(matrix[:, :3], axis=0)
    used = set()
    for axis in range(3):
        cosines = targets @ (matrix[:, axis] / lengths[axis])
        target = int(np.argmax(np.abs(cosines)))
        if 1.0 - abs(cosines[target]) > AXIS_TOLERANCE or target in used:
            raise InputError(
                f"{source.path}: the labels are not on the planes of the DICOM series (rotated "
                "against its slices); a DICOM SEG holds frames in the series' own planes. "
                "Save as NIfTI instead."
            )
        used.add(target)
        order[target] = axis
        signs[target] = float(np.sign(cosines[target]))
    origin = matrix[:, 3].copy()
    flips = []
    for target, axis in enumerate(order):
        if signs[target] < 0:
            origin = origin + matrix[:, axis] * (shape3[axis] - 1)
            flips.append(target)
    frame = source.frame
    step = float(lengths[order[0]]) if len(shape) == 3 else source.step
    out = Placement(
        tuple(order),
        tuple(flips),
        origin,
        step,
        (float(lengths[order[1]]), float(lengths[order[2]])),
        np.concatenate([frame[0], frame[1]]),
    )
    _place_frames(out, shape3[order[0]], source)
    return out


def _place_frames(out: Placement, count: int, source: Source) -> None:
    """Each frame's ImagePositionPatient: a source slice's own where the frame lies on it."""
    from .dicom import UNIFORM_TOLERANCE

    tolerance = max(UNIFORM_TOLERANCE * min(out.step, source.step), 1e-4)
    normal = source.frame[2]
    for k in range(count):
        point = out.origin + k * out.step * normal
        distance = np.linalg.norm(source.positions - point, axis=1)
        nearest = int(np.argmin(distance))
        if distance[nearest] <= tolerance:
            point = source.positions[nearest].copy()
            out.snapped += 1
        out.positions.append(point)


# ---- segments --------------------------------------------------------------------------------


def parse_class_codes(given: str, class_names: Sequence[str]) -> dict:
    """``convert --class-codes``: a JSON file or text mapping class names to "category" and
    "type" codes (SCHEME:VALUE:MEANING), checked against the checkpoint's class names."""
    import json

    option = "--class-codes"
    text = given
    if os.path.isfile(given):
        try:
            text = Path(given).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{option} {given}: cannot be read ({type(exc).__name__}).") from None
    try:
        codes = json.loads(text)
    except ValueError:
        raise InputError(
            f"{option} {given!r} is neither a JSON file nor JSON text; give "
            '{"CLASS": {"category": "SCT:VALUE:MEANING", "type": "SCT:VALUE:MEANING"}}.'
        ) from None
    if not isinstance(codes, dict):
        raise InputError(f"{option}: give a JSON object with one entry per class name.")
    unknown = [name for name in codes if name not in class_names]
    if unknown:
        raise InputError(
            f"{option}: {', '.join(map(repr, unknown))} is not a class of this checkpoint "
            f"({', '.join(class_names)})."
        )
    out = {}
    for name, entry in codes.items():
        if not isinstance(entry, dict) or not set(entry) <= {"category", "type"} or not entry:
            raise InputError(f'{option}: class {name!r}: give {{"category": CODE, "type": CODE}}.')
        for code in entry.values():
            parts = str(code).split(":", 2)
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise InputError(f"{option}: class {name!r}: code {code!r}: give SCHEME:VALUE:MEANING.")
        out[str(name)] = {k: str(v) for k, v in entry.items()}
    return out


def _code(text: str):
    from highdicom.sr import CodedConcept

    parts = str(text).split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise InputError(f"class code {text!r}: give SCHEME:VALUE:MEANING, as in {DEFAULT_CODE}.")
    scheme, value, meaning = (p.strip() for p in parts)
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _segments(
    names: Sequence[str],
    algorithm: Algorithm | None,
    codes: Mapping[str, Mapping] | None,
    edited: bool = False,
) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm_codes

    kind = hd.seg.SegmentAlgorithmTypeValues
    identification = None
    if algorithm is not None:
        parameters = {"checkpoint": algorithm.checkpoint, "sha256": algorithm.sha256}
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm.name,
            family=dcm_codes.cid7162.ArtificialIntelligence,
            version=algorithm.version or "unknown",
            parameters=parameters,
        )
    out = []
    for number, name in enumerate(names, start=1):
        chosen = (codes or {}).get(name) or {}
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(name)[:64],
                segmented_property_category=_code(chosen.get("category", DEFAULT_CODE)),
                segmented_property_type=_code(chosen.get("type", DEFAULT_CODE)),
                algorithm_type=(
                    kind.MANUAL if algorithm is None else kind.SEMIAUTOMATIC if edited else kind.AUTOMATIC
                ),
                algorithm_identification=identification,
            )
        )
    return out


def _check_labels(labels: np.ndarray, names: Sequence[str]) -> list[str]:
    """Foreground names (label value k -> names[k]); notes for classes without voxels."""
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise InputError(f"labels of type {labels.dtype}: a DICOM SEG is written from integer labels.")
    counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=len(names))
    if labels.size and (labels.min() < 0 or len(counts) > len(names)):
        extra = sorted(int(v) for v in np.nonzero(counts[len(names) :])[0] + len(names))
        raise InputError(
            f"label value{'s' * (len(extra) > 1)} {', '.join(map(str, extra[:5]))} "
            f"{'have' if len(extra) > 1 else 'has'} no class name (there "
            f"{'is 1 class' if len(names) == 2 else f'are {len(names) - 1} classes'}); a DICOM SEG "
            "names every segment."
        )
    empty = [names[k] for k in range(1, len(names)) if counts[k] == 0]
    if not empty:
        return []
    if len(empty) == len(names) - 1:
        return ["no class has any voxel: the SEG describes every class as a segment and holds empty frames."]
    return [
        f"{', '.join(repr(n) for n in empty)} {'have' if len(empty) > 1 else 'has'} no voxels: "
        f"{'their segments are' if len(empty) > 1 else 'its segment is'} described in the SEG, "
        "without frames."
    ]


# ---- the object ------------------------------------------------------------------------------


def build(
    labels: np.ndarray,
    like,
    names: Sequence[str],
    *,
    seg_type: str = "binary",
    probabilities: np.ndarray | None = None,
    algorithm: Algorithm | None = None,
    codes: Mapping[str, Mapping] | None = None,
    source: Source | None = None,
    edited: bool = False,
):
    """The SEG dataset and notes for the user.

    ``labels``: integer labels on the scan grid (napari order), value k is class ``names[k]``
    (``names[0]`` the background). ``probabilities``: for ``fractional``, (K, *labels.shape) in
    [0, 1], one per foreground class in ``names[1:]`` order. ``algorithm``: None for a mask
    painted by hand (MANUAL segments); with ``edited``, a prediction corrected by hand
    (SEMIAUTOMATIC).
    """
    import highdicom as hd

    if seg_type not in SEG_TYPES:
        raise InputError(f"--seg-type {seg_type}: choose {', '.join(SEG_TYPES)}.")
    labels = np.asarray(labels)
    names = [str(n) for n in names]
    if len(names) < 2:
        raise InputError("a DICOM SEG needs at least one foreground class.")
    notes = _check_labels(labels, names)
    source = source or load_source(like)
    where = placement(labels.shape, like, source)
    if seg_type == "fractional":
        if probabilities is None or tuple(np.shape(probabilities)) != (len(names) - 1, *labels.shape):
            raise InputError(
                "--seg-type fractional needs the class probabilities of the run, one per foreground "
                "class; a painted mask has none (save it as binary or labelmap)."
            )
        pixels = np.stack([where.apply(p) for p in np.asarray(probabilities, np.float32)], axis=-1)
        pixels = np.clip(pixels, 0.0, 1.0)
    else:  # label values as segment numbers: highdicom splits BINARY segments itself, and a
        # (frames, rows, cols, segments) stack would take a byte per voxel and class
        pixels = where.apply(labels).astype(np.uint8 if len(names) <= 256 else np.uint16)
    if where.snapped < len(where.positions):
        notes.append(
            f"{source.path.name}: the scan was resampled when read (see its notes), so the SEG's "
            f"frames lie on that uniform grid, {where.step:.3f} mm apart, each at its own plane "
            f"position ({where.snapped} of {len(where.positions)} on a source slice)."
        )
    positions = [
        hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in p])
        for p in where.positions
    ]
    first = source.datasets[0]
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=list(where.pixel_spacing),
        slice_thickness=float(getattr(first, "SliceThickness", 0) or where.step),
        spacing_between_slices=where.step if len(where.positions) > 1 else None,
    )
    orientation = hd.PlaneOrientationSequence(
        hd.CoordinateSystemNames.PATIENT, [float(v) for v in where.orientation]
    )
    sources = [_with_type2(ds) for ds in source.datasets]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=seg_type.upper(),
        segment_descriptions=_segments(names[1:], algorithm, codes, edited),
        series_instance_uid=hd.UID(),
        series_number=_series_number(first),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-attunet",
        manufacturer_model_name="napari-attunet",
        software_versions=_version(algorithm),
        device_serial_number="0",
        content_description=(f"{algorithm.checkpoint}" if algorithm else "painted by hand")[:64],
        content_label="ATTUNET",
        series_description=_series_description(first, algorithm),
        plane_positions=positions,
        plane_orientation=orientation,
        pixel_measures=measures,
        omit_empty_frames=not _all_empty(pixels),
        max_fractional_value=255,
    )
    try:
        seg.copy_patient_and_study_information(first)  # every patient and study attribute there is
    except (KeyError, AttributeError):
        pass  # a SOP class highdicom does not know: the attributes highdicom copied stay
    return seg, notes


def _with_type2(ds):
    """A copy of a source header where absent type 2 attributes are present and empty."""
    missing = [key for key in TYPE2 if key not in ds]
    if not missing:
        return ds
    copy = ds.copy()
    for key in missing:
        setattr(copy, key, None)
    return copy


def _all_empty(pixels: np.ndarray) -> bool:
    return not np.any(pixels)


def _series_number(ds) -> int:
    try:
        return 1000 + int(ds.SeriesNumber)
    except (AttributeError, TypeError, ValueError):
        return 1000


def _version(algorithm: Algorithm | None) -> str:
    from .. import __version__

    return (algorithm.version if algorithm and algorithm.version else __version__) or "unknown"


def _series_description(ds, algorithm: Algorithm | None) -> str:
    what = "attunet" if algorithm else "attunet manual"
    base = str(getattr(ds, "SeriesDescription", "") or "").strip()
    return (f"{base} {what} SEG" if base else f"{what} SEG")[:64]


# ---- writing ---------------------------------------------------------------------------------


def require_highdicom(what: str) -> None:
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise InputError(f'{what} needs highdicom: pip install "napari-attunet[dicom-seg]".') from None


def write_run(
    stage,
    name: str,
    labels,
    volume,
    pred,
    seg_type: str,
    algorithm: Algorithm | None,
    source: Source | None = None,
) -> list[str]:
    """A run's SEG (``pred``: its Prediction) into the scan's set of outputs; notes for the user.
    Category and type codes per class come from the checkpoint's ``class_codes`` metadata."""
    probabilities = None
    if seg_type == "fractional":
        probabilities = pred.probabilities
        probabilities = probabilities[1:] if pred.output == "softmax" else probabilities
    return write_staged(
        stage,
        name,
        labels,
        volume,
        list(pred.label_names),
        seg_type=seg_type,
        probabilities=probabilities,
        algorithm=algorithm,
        codes=algorithm.codes if algorithm else None,
        source=source,
    )


def write_staged(stage, name: str, labels: np.ndarray, like, names: Sequence[str], **options) -> list[str]:
    """Build the SEG and write it into an ``outputs.Staging`` set (moved into place on commit);
    the notes for the user."""
    seg, notes = build(labels, like, names, **options)
    frames = int(seg.NumberOfFrames)
    stage.write(
        name, lambda target: seg.save_as(target, enforce_file_format=True), lambda t: _verify(t, frames)
    )
    return notes


def write(
    path: str | os.PathLike,
    labels: np.ndarray,
    like,
    names: Sequence[str],
    *,
    overwrite: bool = False,
    **options,
) -> tuple[Path, list[str]]:
    """Write a SEG file whole or not at all; an existing file is replaced only with
    ``overwrite=True`` (else ``outputs.OutputExists``). Returns the path and notes."""
    from . import outputs

    path = Path(path).expanduser()
    outputs.check_target(path, overwrite, "overwrite=True")
    outputs.check_folder(path.parent, "the output path")
    with outputs.staged(path.parent, overwrite, "overwrite=True") as stage:
        notes = write_staged(stage, path.name, labels, like, names, **options)
    return path, notes


def _verify(path: Path, frames: int) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    if str(ds.SOPClassUID) not in (SEG_SOP_CLASS, LABELMAP_SOP_CLASS) or int(ds.NumberOfFrames) != frames:
        raise OSError(5, "the SEG did not read back whole")
    _ = ds.PixelData


# ---- reading a SEG back ----------------------------------------------------------------------


@dataclass
class SegFrames:
    """A SEG file's frames as plain arrays (read with pydicom), each placed by its own plane
    position; ``names[k - 1]`` is the label of segment k."""

    path: Path
    seg_type: str
    names: list[str]
    frame_of_reference: str
    series: str  # the SeriesInstanceUID it refers to
    orientation: np.ndarray  # (6,)
    spacing: np.ndarray  # (2,) between rows, between columns
    positions: np.ndarray  # (frames, 3)
    segments: list[int | None]  # per frame; None in a label map
    pixels: np.ndarray  # (frames, rows, cols)
    maximum: int = 1  # of a fractional SEG's pixels

    def frame_labels(self, k: int) -> np.ndarray:
        """Frame ``k`` as label values (segment numbers, 0 for none)."""
        pixels = self.pixels[k]
        if self.segments[k] is None:
            return pixels.astype(np.int32)
        cut = (self.maximum + 1) // 2 if self.seg_type == "FRACTIONAL" else 1
        return np.where(pixels >= cut, self.segments[k], 0).astype(np.int32)

    def points(self, k: int) -> np.ndarray:
        """(rows, cols, 3) LPS points of frame ``k``'s pixels."""
        rows, cols = self.pixels.shape[1:]
        r, c = self.orientation[:3], self.orientation[3:]
        i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        return (
            self.positions[k]
            + (i * self.spacing[0])[..., None] * c[None, None]
            + (j * self.spacing[1])[..., None] * r[None, None]
        )


def is_seg_file(path: str | os.PathLike) -> bool:
    """Whether a file is a DICOM Segmentation (binary, fractional or label map), by its file meta
    (no pydicom needed: a plain install opens scans without it)."""
    from . import dicom_tags as tags

    try:
        with open(path, "rb") as fh:
            found = tags.file_meta(fh.read(1 << 14))
    except (OSError, ValueError, struct.error):
        return False
    sop = tags.text(found[0].get((0x0002, 0x0002))) if found else ""
    return sop in (SEG_SOP_CLASS, LABELMAP_SOP_CLASS)


def read_seg(path: str | os.PathLike) -> SegFrames:
    """A SEG file's frames; an InputError naming the file when it cannot be placed."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a broken file
        raise InputError(
            f"{path}: cannot be read as a DICOM SEG ({type(exc).__name__}); copy it again."
        ) from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frames:
        raise InputError(f"{path}: the SEG has no per-frame positions; it cannot be placed on its series.")

    def value(item, sequence, key):
        for group in (item, shared):
            if group is not None and sequence in group and key in group[sequence][0]:
                return np.array(group[sequence][0][key].value, dtype=float)
        raise InputError(f"{path}: the SEG frames lack {key}; it cannot be placed on its series.")

    positions = np.array([value(f, "PlanePositionSequence", "ImagePositionPatient") for f in per_frame])
    segments = [
        int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if "SegmentIdentificationSequence" in f
        else None
        for f in per_frame
    ]
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    referenced = ds.get("ReferencedSeriesSequence") or []
    return SegFrames(
        path,
        str(ds.SegmentationType),
        [names.get(k, f"segment {k}") for k in range(1, max(names, default=0) + 1)],
        str(getattr(ds, "FrameOfReferenceUID", "")),
        str(referenced[0].SeriesInstanceUID) if referenced else "",
        value(per_frame[0], "PlaneOrientationSequence", "ImageOrientationPatient"),
        value(per_frame[0], "PixelMeasuresSequence", "PixelSpacing"),
        positions,
        segments,
        pixels,
        int(getattr(ds, "MaximumFractionalValue", 1) or 1),
    )


def labels_on_grid(seg: SegFrames, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray | None:
    """The SEG's labels on a scan's grid (napari order ``affine``, ``shape``), each frame pixel at
    the voxel where its position lies; None when a pixel lies off that grid (another series)."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or len(shape) != 3:
        return None
    inverse = np.linalg.inv(affine)
    out = np.zeros(tuple(shape), np.uint8 if len(seg.names) < 256 else np.uint16)
    for k in range(len(seg.positions)):
        world = seg.points(k).reshape(-1, 3)[:, ::-1]  # LPS -> napari world (S, P, L)
        index = (inverse[:3, :3] @ world.T + inverse[:3, 3:]).T
        nearest = np.rint(index)
        if np.abs(index - nearest).max() > 1e-2:
            return None
        nearest = nearest.astype(np.int64)
        if (nearest < 0).any() or (nearest >= np.asarray(shape)).any():
            return None
        labels = seg.frame_labels(k).reshape(-1)
        hit = labels > 0
        out[tuple(nearest[hit].T)] = labels[hit]
    return out


def seg_volume(seg: SegFrames):
    """The SEG on a grid of its own (its frames' planes, one step apart along the normal; frames
    left out for being empty are zeros), as an ``io.Volume`` read like any scan."""
    import SimpleITK as sitk

    from . import dicom, io

    frame = dicom.patient_frame(seg.orientation)
    depth = seg.positions @ frame[2]
    levels = np.unique(np.round(depth, 3))
    steps = np.diff(levels)
    step = float(steps.min()) if steps.size else 1.0
    first = seg.positions[int(np.argmin(depth))]
    slot = np.rint((depth - depth.min()) / step).astype(int)
    drift = np.abs(seg.positions - first - np.outer(depth - depth.min(), frame[2])).max()
    if np.abs((depth - depth.min()) / step - slot).max() > 0.01 or drift > 1e-2:
        raise InputError(f"{seg.path}: the SEG's frames are not on one grid; open it over its series.")
    array = np.zeros(
        (int(slot.max()) + 1, *seg.pixels.shape[1:]), np.uint8 if len(seg.names) < 256 else np.uint16
    )
    for k in range(len(seg.positions)):
        labels = seg.frame_labels(k)
        np.copyto(array[slot[k]], labels.astype(array.dtype), where=labels > 0)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((float(seg.spacing[1]), float(seg.spacing[0]), step))
    image.SetOrigin(tuple(float(v) for v in first))
    image.SetDirection(tuple(float(v) for v in frame.T.reshape(-1)))
    return io._to_volume(image, seg.path, [])

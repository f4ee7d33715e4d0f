"""Readers: scans become Image layers with their geometry; checkpoints open the widget."""

from __future__ import annotations

import os
from pathlib import Path

from ..models.suffixes import CHECKPOINT_SUFFIXES
from ..scans.io import SCAN_SUFFIXES, SUPPORTED_FORMATS
from .orientation import AXIS_LABELS
from .transforms import GEOMETRY_KEY, data_to_world, display_kwargs, layer_state, same_grid
from .windows import WINDOW_KEY, initial_window, widen_slider

# Files users drop by mistake, which no reader of napari's own claims (napari_builtins reads
# .csv, .h5, .npy, images...): napari asks a reader only about the filename patterns in its
# manifest, so these get our sentence (the file, and what opens) where napari would say only
# "No plugin found capable of reading" it. Other unsupported files still get napari's message.
ARCHIVE_SUFFIXES = (".zip", ".7z", ".rar", ".tar", ".tgz", ".tar.gz")
MISTAKEN_SUFFIXES = (
    (".txt", ".md", ".rtf", ".pdf", ".doc", ".docx", ".odt", ".xls", ".xlsx", ".ods")
    + (".ppt", ".pptx", ".json", ".xml", ".yaml", ".yml", ".log", ".html", ".htm")
    + ARCHIVE_SUFFIXES
    + (".mgz", ".onnx", ".pkl")
)


def get_reader(path):
    """npe2 reader hook: a callable for files this plugin reads, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    name = str(path).lower()
    if name.endswith(MISTAKEN_SUFFIXES) and not os.path.isdir(path):
        return refuse_file
    if name.rstrip("/").endswith(".zarr"):
        from .store_reader import is_result_store, read_store

        return read_store if is_result_store(path) else None
    if name.endswith(CHECKPOINT_SUFFIXES):
        return read_checkpoint
    if name.endswith(".dcm"):
        from .seg_reader import is_seg, read_seg

        if is_seg(path):
            return read_seg
    if name.endswith(SCAN_SUFFIXES) or (os.path.isdir(path) and _has_dicom(Path(path))):
        return read_scan
    return None


def unsupported_message(path) -> str:
    """The sentence for a file this plugin does not open: what it is, what opens, what to do."""
    name = str(path).lower()
    suffix = next((s for s in sorted(MISTAKEN_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")
    kind = f"{suffix} files" if suffix else "this kind of file"
    if suffix in ARCHIVE_SUFFIXES:
        remedy = "Unpack it first, then open the folder (a DICOM series) or a scan file inside."
    elif suffix == ".mgz":
        remedy = "Convert it to NIfTI first (FreeSurfer: mri_convert scan.mgz scan.nii.gz)."
    else:
        remedy = "Export the scan in one of these formats."
    return (
        f"{path}: napari-attunet does not open {kind}. It opens scans as {SUPPORTED_FORMATS}, "
        f"result stores (.zarr folders) and checkpoints ({', '.join(CHECKPOINT_SUFFIXES)}). {remedy}"
    )


def refuse_file(path):
    """One notification naming the file and the formats that open; no layer."""
    from .notify import notify

    notify("error", unsupported_message(path[0] if isinstance(path, (list, tuple)) else path))
    return [(None,)]


def _has_dicom(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() == ".dcm" or p.suffix == "" for p in folder.iterdir() if p.is_file())
    except OSError:
        return False


def read_scan(path):
    import napari
    from napari.utils.notifications import show_error, show_info

    from ..scans import io
    from .orientation import install

    install(napari.current_viewer())
    path = path[0] if isinstance(path, (list, tuple)) else path
    try:
        volume = io.read(path)
        ndim = volume.array.ndim
        limits, window = initial_window(path, volume.array)
        kwargs = {
            "name": volume.name,
            **display_kwargs(volume.affine),
            "units": ("mm",) * ndim,
            "axis_labels": AXIS_LABELS if ndim == 3 else ("y", "x"),
            "contrast_limits": limits,
            "metadata": {GEOMETRY_KEY: volume.geometry(), WINDOW_KEY: window},
        }
    except ValueError as exc:
        show_error(str(exc))
        return [(None,)]
    except Exception as exc:  # noqa: BLE001 - a notification, never a half-added layer
        show_error(
            f"{path}: could not be opened ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})."
        )
        return [(None,)]
    for note in volume.notes:
        show_info(note)
    _link_new_labels()
    if not _is_dicom(path) and is_label_map(volume.array):
        show_info(
            f"{Path(path).name}: opened as a label map (whole values from 0, mostly 0); "
            "to see it as an image, right-click the layer and choose Convert to Image."
        )
        labels = whole_labels(volume.array)
        return [(labels, label_map_kwargs(kwargs, labels), "labels")]
    return [(volume.array, kwargs, "image")]


def _is_dicom(path) -> bool:
    """A DICOM file or series: its images are never label maps (a SEG has its own reader)."""
    return os.path.isdir(path) or str(path).lower().endswith(".dcm")


MAX_LABEL_VALUES = 32  # more distinct values than this make an image, not a label map
SAMPLE_VOXELS = 1 << 20


def is_label_map(array) -> bool:
    """A ground truth or a result written by another tool: whole values, 0 the smallest and
    the most common (the background), at most ``MAX_LABEL_VALUES`` of them. A scan has many
    values, and a phantom's background is rarely 0. A sample decides first, so that a CT
    costs no more than a strided read; a candidate is then checked whole."""
    import numpy as np

    if array.dtype.kind not in "biuf" or array.size == 0:
        return False
    sample = np.asarray(array).reshape(-1)[:: max(1, array.size // SAMPLE_VOXELS)]
    if not _looks_like_labels(sample):
        return False
    return _looks_like_labels(np.asarray(array).reshape(-1))


def _looks_like_labels(values) -> bool:
    import numpy as np

    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            return False
    if values.min() != 0 or values.max() > 65535:
        return False
    counts = np.bincount(values.astype(np.int64))
    present = np.count_nonzero(counts)
    return 1 < present <= MAX_LABEL_VALUES and int(np.argmax(counts)) == 0


def whole_labels(array):
    """napari's Labels take integers: a label map stored as floats (MONAI's SaveImage, many
    nibabel scripts) becomes the smallest unsigned type that holds it."""
    import numpy as np

    if array.dtype.kind != "f":
        return array
    return array.astype(np.uint8 if array.max() < 256 else np.uint16)


def label_map_kwargs(image_kwargs: dict, array) -> dict:
    """A label map keeps the scan reader's placement and geometry (so it saves back voxel for
    voxel and lines up with its scan) and gets the results' palette, so that a reference's
    class 1 has the colour of a run's class 1."""
    import numpy as np

    from .layers import LABELS_OPACITY, label_colormap

    kept = {k: v for k, v in image_kwargs.items() if k != "contrast_limits"}
    metadata = {k: v for k, v in kept.pop("metadata").items() if k == GEOMETRY_KEY}
    return {
        **kept,
        "metadata": metadata,
        "colormap": label_colormap(int(np.max(array)) + 1),
        "opacity": LABELS_OPACITY,
        "rendering": "iso_categorical",
    }


def _link_new_labels() -> None:
    """Let Labels layers made on a scan (napari's "New labels layer") know the scan's file.

    napari gives such a layer the scan's grid but not its metadata; with the scan's geometry,
    the writer stores a painted mask in the scan's own file orientation, voxel for voxel.
    """
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return
    emitter = viewer.layers.events.inserted
    for hook in (_adopt_scan_geometry, widen_slider):
        if hook not in list(emitter.callbacks):
            emitter.connect(hook)


def _adopt_scan_geometry(event) -> None:
    from napari.layers import Image, Labels

    layer = event.value
    if not isinstance(layer, Labels) or GEOMETRY_KEY in layer.metadata:
        return
    grid = data_to_world(layer_state(layer))
    for other in event.source:
        if (
            isinstance(other, Image)
            and GEOMETRY_KEY in other.metadata
            and tuple(other.data.shape) == tuple(layer.data.shape)
            and same_grid(data_to_world(layer_state(other)), grid)
        ):
            layer.metadata = {**layer.metadata, GEOMETRY_KEY: other.metadata[GEOMETRY_KEY]}
            return


def read_checkpoint(path):
    """Dock the widget with this checkpoint selected; no layers."""
    import napari

    path = path[0] if isinstance(path, (list, tuple)) else path
    viewer = napari.current_viewer()
    if viewer is None:
        return [(None,)]
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    widget.load_checkpoint(path)
    return [(None,)]

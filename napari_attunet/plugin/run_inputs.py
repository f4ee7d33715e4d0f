"""What a run is given: its options from the widget's values, the arrays of the chosen layers,
the Preview region, and the memory check made before the worker starts.

Everything here but ``preview_centre`` is a plain function of its arguments; nothing holds state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..inference.options import RunOptions

PREVIEW_DEPTH = 32  # slices around the current one
PREVIEW_PLANE = 192  # voxels across, around the view centre
CHECKPOINT_DEFAULT = "checkpoint default"


def run_options(form) -> RunOptions:
    """The run's options from the values the widget shows (``form``: its fields by name)."""
    from ..inference.options import RunOptions

    return RunOptions(
        device=form.device.value,
        precision=form.precision.value,
        runtime=form.runtime.value,
        normalization=None if form.normalization.value == CHECKPOINT_DEFAULT else form.normalization.value,
        tile=form.tile.value or None,
        overlap=float(form.overlap.value),
        tta=bool(form.tta.value),
        orientation=None if form.scan_layout.value == CHECKPOINT_DEFAULT else form.scan_layout.value,
    )


def threshold_values(output: str, argmax: bool, sliders: list[float]) -> list[float] | None:
    """The thresholds labels follow; None is the default rule (Prediction.labels): argmax
    for softmax models, 0.5 per channel for sigmoid ones (where the sliders start)."""
    from ..inference.postprocess import check_thresholds

    if output == "softmax" and argmax:
        return None
    check_thresholds(sliders, "the threshold sliders")
    return ([0.0] + list(sliders)) if output == "softmax" else list(sliders)


def channel_data(layer, extra: list, in_channels: int) -> tuple[Any, int | None]:
    """The arrays a multi-channel model takes: the chosen layer, then the ``extra`` ones,
    with the channel axis (-1 for an RGB layer, else None)."""
    rgb = getattr(layer, "rgb", False)
    if rgb and in_channels not in (3, 4):
        raise ValueError(
            f"layer {layer.name!r} is RGB ({layer.data.shape[-1]} channels), but "
            f"the model takes {in_channels}; convert it to greyscale first "
            "(or pick a scan layer)."
        )
    if in_channels == 1 or rgb:
        return layer.data, (-1 if rgb else None)
    layers = [layer] + [other for other in extra if other is not layer]
    if len(layers) != in_channels:
        raise ValueError(
            f"the model takes {in_channels} channels: choose "
            f"{in_channels - 1} more image layer(s) under 'more channels' "
            f"(chosen: {', '.join(lay.name for lay in layers)})."
        )
    return [lay.data for lay in layers], None  # read in the worker, not here


def full_resolution(data):
    """The first level of a multiscale layer's data (dask and zarr arrays stay lazy: the engine
    reads them window by window, in the worker)."""
    if type(data).__name__ == "MultiScaleData":
        return data[0]
    return data


def scan_geometry(layer) -> dict[str, Any]:
    """Where the layer's voxels are (its world transform) and how its file stored them."""
    from .transforms import GEOMETRY_KEY, data_to_world, layer_state

    n = layer.ndim  # napari counts no RGB axis
    kept = layer.metadata.get(GEOMETRY_KEY) or {}
    orientation = (kept.get("source") or {}).get("orientation")
    return {
        "affine": data_to_world(layer_state(layer), n) if n in (2, 3) else None,
        "file_orientation": orientation,
    }


def bytes_needed(shape: list[int], in_channels: int, out_channels: int, lazy: bool) -> float:
    """Memory a run holds for a scan of ``shape`` (no channel axis)."""
    voxels = float(np.prod([float(n) for n in shape]))
    if lazy:  # read and predicted block by block; the result is held here
        return voxels * (out_channels + 5)  # uint8 probabilities, uncertainty, labels
    return voxels * 4 * (3 * in_channels + 2 * out_channels + 1)


def refuse_too_large(data, channel_axis: int | None, spec, name: str) -> None:
    """Refuse a layer too large for memory from its shape alone: a lazy (dask, zarr) layer
    is never read in the GUI thread; the worker reads it."""
    from ..errors import InputError
    from ..inference.lazy import is_lazy
    from ..limits import refuse_over

    first = data[0] if isinstance(data, list) else data
    shape = list(np.shape(first))
    if channel_axis is not None:
        del shape[channel_axis]
    needed = bytes_needed(shape, spec.in_channels, spec.out_channels, is_lazy(first))
    refuse_over(
        needed,
        f"layer {name!r} ({' x '.join(map(str, shape))} voxels)",
        "crop it (or open a region of it) first.",
        InputError,
    )


def store_run_wanted(data, channel_axis: int | None = None, spec=None) -> bool:
    """Whether Run writes a result store: for a dask/zarr layer, and (given the model's
    ``spec``) for an in-memory one whose in-memory run would not fit in free memory."""
    from ..inference.lazy import is_lazy
    from ..limits import fits

    if is_lazy(data):
        return True
    if spec is None:
        return False
    shape = list(np.shape(data))
    if channel_axis is not None:
        del shape[channel_axis]
    return not fits(bytes_needed(shape, spec.in_channels, spec.out_channels, False))[0]


def store_bytes(shape: list[int], spec, tta: bool) -> float:
    """Bytes a result store takes at most (uncompressed): uint8 probabilities, labels and
    uncertainty (and the TTA spread) per voxel, and each gate map, float32 on its own grid."""
    voxels = float(np.prod([float(n) for n in shape]))
    per_voxel = spec.out_channels + 2 + (1 if tta else 0)
    for gate in spec.gates:
        per_voxel += 4.0 * gate.heads / float(np.prod(gate.stride))
    return voxels * per_voxel


def refuse_store_too_large(data, channel_axis: int | None, spec, name: str, folder, tta: bool) -> None:
    """Refuse a store run whose store cannot fit on the disk of ``folder``, from the shape alone."""
    import shutil
    from pathlib import Path

    from ..errors import InputError
    from ..limits import gib

    shape = list(np.shape(data))
    if channel_axis is not None:
        del shape[channel_axis]
    needed = store_bytes(shape, spec, tta)
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if needed > 0.9 * free:
        raise InputError(
            f"layer {name!r} ({' x '.join(map(str, shape))} voxels) needs up to {gib(needed)} of disk "
            f"for its result store in {folder}, but only {gib(free)} is free there; crop it "
            "(or open a region of it) first, or free some space."
        )


def region_around(centre, shape) -> tuple[slice, ...]:
    """PREVIEW_DEPTH slices by PREVIEW_PLANE voxels across around ``centre``, inside ``shape``."""
    sizes = (PREVIEW_DEPTH,) + (PREVIEW_PLANE,) * (len(shape) - 1)
    region = []
    for c, size, n in zip(centre, sizes, shape, strict=True):
        start = int(np.clip(c - size // 2, 0, max(n - size, 0)))
        region.append(slice(start, min(start + size, n)))
    return tuple(region)


def preview_centre(viewer, layer) -> np.ndarray:
    """The voxel of ``layer`` at the current slice and the centre of the view."""
    from .orientation import camera_of

    point = np.array(viewer.dims.point[-layer.ndim :], dtype=float)
    lead = viewer.dims.ndim - layer.ndim
    for axis, c in zip(list(viewer.dims.displayed)[-2:], camera_of(viewer).center[-2:], strict=False):
        if axis >= lead:
            point[axis - lead] = c
    return np.round(layer.world_to_data(point)).astype(int)


def preview_region(viewer, layer, shape) -> tuple[slice, ...] | None:
    """A region around the current slice and the view centre, for a run of seconds.

    The engine predicts it with the whole scan's intensity statistics and context around
    it, so that inside the region Preview agrees with Run.
    """
    if len(shape) < 3 or getattr(layer, "rgb", False):
        return None
    return region_around(preview_centre(viewer, layer), shape)

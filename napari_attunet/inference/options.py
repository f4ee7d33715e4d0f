"""The user's choices for one run, held once: ``RunOptions``.

``predict(image, model, **keywords)`` is the public API; its keywords become one frozen
``RunOptions``, checked once against the model (``checked``), and that object is what the
stages of a run (plan, run, finish), the blocks on Dask, the command line and the widget pass
on. Values that belong to one part of a run rather than to the user (a block's place on the
whole run's grids, the intensity statistics of the whole volume) are explicit parameters of the
functions that need them, never options.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .postprocess import check_thresholds
from .preprocess import check_spacing, check_tile

_WHOLE_RUN = ("out", "scheduler", "block", "workers", "region")  # region last: it runs in memory
_SCAN_OWN = ("spacing", "affine", "file_orientation", "region")  # what belongs to one scan


@dataclass(frozen=True, eq=False)
class RunOptions:
    """Every choice a run is made with; the defaults are ``predict``'s."""

    # the image: where it lies and what it is called in messages
    spacing: tuple[float, ...] | None = None
    channel_axis: int | None = None
    affine: Any = None  # (ndim+1)^2 world affine, napari axis order (see scans.geometry)
    file_orientation: str | None = None
    name: str = "the image"
    # what the network is shown
    normalization: Any = None  # None: the checkpoint's, else the family's usual
    orientation: str | None = None  # overrides the checkpoint's training orientation
    # windows
    tile: tuple[int, ...] | int | None = None
    overlap: float = 0.5
    batch_size: int | None = None
    # where and how the network runs
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    calibration: Any = None  # precision int8: a folder of scans to calibrate on (None: the scan)
    fold_batchnorm: bool = True
    channels_last: bool = True
    # what comes out
    tta: bool = False
    attention: bool = True
    region: tuple[slice, ...] | None = None  # only this part (Preview), as the whole run sees it
    thresholds: Any = None  # labels written into a store (one per class, or one for all)
    # block by block on Dask, into memory or an OME-Zarr store
    out: Any = None
    overwrite: bool = False  # replace a store at ``out``, once the new one is whole
    scheduler: Any = None
    block: Any = None
    workers: int | None = None

    @classmethod
    def from_keywords(cls, **keywords: Any) -> RunOptions:
        """The options from ``predict``'s keywords; an unknown keyword is a TypeError, as in
        any Python call."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(f"predict() got unexpected keyword argument(s): {', '.join(unknown)}")
        return cls(**keywords)

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    @property
    def blockwise(self) -> bool:
        """Whether the run goes block by block (a store, a scheduler or blocks asked for)."""
        return any(getattr(self, k) is not None for k in _WHOLE_RUN[:-1])

    def for_blocks(self, tile: tuple[int, ...], channel_axis: int | None) -> RunOptions:
        """What each block of a run is run with: these choices on the run's tiles, with
        nothing that belongs to the whole run (its store, scheduler, blocks, region)."""
        cleared: dict[str, Any] = dict.fromkeys(_WHOLE_RUN)
        return dataclasses.replace(self, tile=tile, channel_axis=channel_axis, **cleared)

    def for_another_scan(self, name: str, tile) -> RunOptions:
        """These choices for another scan (a calibration scan, say), on ``tile``: nothing that
        belongs to the scan at hand (its spacing, placement, region)."""
        cleared: dict[str, Any] = dict.fromkeys(_SCAN_OWN)
        return dataclasses.replace(self, name=name, tile=tile, **cleared)

    def with_volume(self, image) -> tuple[Any, RunOptions, tuple[float, ...] | None]:
        """(the array, these options with a scan's geometry filled in, the scan's origin) for a
        scan from ``scans.io.read`` (or a list of them, one per channel, on one grid); any other
        image comes back as it is."""
        if isinstance(image, (list, tuple)) and image:
            return self._with_channel_scans(list(image))
        if not _is_scan(image):
            return image, self, None
        options = self.replace(
            spacing=image.spacing if self.spacing is None else self.spacing,
            affine=image.affine if self.affine is None else self.affine,
            file_orientation=self.file_orientation or image.source.get("orientation"),
        )
        return image.array, options, tuple(image.origin)

    def _with_channel_scans(self, images: list) -> tuple[Any, RunOptions, tuple[float, ...] | None]:
        """``with_volume`` for a list of channel images: the scans' arrays and the first one's
        geometry, once every scan is known to lie on its grid."""
        for item in images:
            if isinstance(item, (str, os.PathLike)):
                raise InputError(
                    f"{self.name}: {item} is a file name; read each channel with "
                    "napari_attunet.scans.io.read (or pass its array) and pass the list of those."
                )
        if not all(_is_scan(item) for item in images):
            return images, self, None
        first = images[0]
        for scan in images[1:]:
            if np.shape(scan.array) != np.shape(first.array) or not np.allclose(
                scan.affine, first.affine, atol=1e-3
            ):
                raise InputError(
                    f"{self.name}: the channel scans {first.name} and {scan.name} do not lie on "
                    "one grid (their shapes or placements differ); resample them onto one grid first."
                )
        _, options, origin = self.with_volume(first)
        return [scan.array for scan in images], options, origin

    def checked(self, spec) -> RunOptions:
        """These options checked against the model, each value in its canonical form; raises
        InputError with one sentence naming the option."""
        check_thresholds(self.thresholds)
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"overlap must be in [0, 1), not {self.overlap}.")
        return self.replace(
            spacing=check_spacing(self.spacing, self.name),
            tile=check_tile(self.tile, spec.spatial_dims),
        )


def _is_scan(image) -> bool:
    """A scan from ``scans.io.read`` (a Volume): an array with its world placement."""
    return hasattr(image, "array") and hasattr(image, "affine")

"""How a scan's array is laid out for a network, and back: a permutation and flips.

A checkpoint states how its training pipeline showed it scans (``ModelSpec.network_orientation``):
an axis code such as "RAS" (MONAI's ``Orientationd``), "native" (as the file stores them, like
the official nibabel loaders) or "display" (as napari shows the array). The engine reads the
scan's own orientation from its affine and turns the array, like ``Orientationd`` does: by
permuting and flipping axes, never by resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..models import ModelSpec
from ..scans import geometry as geo

# The layout of arrays from this tool's reader: (z, y, x) toward Superior, Posterior, Left.
CANONICAL = {3: "SPL", 2: "PL"}


@dataclass(frozen=True)
class Layout:
    """Network array = ``flip(transpose(scan array, permutation), flipped)``."""

    permutation: tuple[int, ...]
    flipped: tuple[int, ...] = ()
    description: str = ""

    @property
    def identity(self) -> bool:
        return self.permutation == tuple(range(len(self.permutation))) and not self.flipped

    @property
    def inverse(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.permutation))


def scan_orientation(affine: np.ndarray | None, ndim: int) -> str:
    """The orientation code of a scan array: from its affine, else the reader's canonical one."""
    if affine is None:
        return CANONICAL[ndim]
    return geo.orientation(np.asarray(affine, dtype=float))


def network_layout(
    spec: ModelSpec,
    ndim: int,
    affine: np.ndarray | None = None,
    file_orientation: str | None = None,
    override: str | None = None,
) -> Layout:
    """How to lay a (napari-order) scan array of ``ndim`` axes out for ``spec``'s network.

    ``affine`` places the array in world (see ``geometry``); ``file_orientation`` is the axis code
    of the file as stored (for "native" checkpoints); ``override`` replaces the checkpoint's
    orientation for this run.
    """
    if override and override != "display" and spec.spatial_dims == 2:
        raise InputError(
            f"orientation {override!r} cannot apply to this 2D network: it sees each plane as "
            f"napari displays it (axes {spec.axes or 'yx'!r}); leave the orientation out, or give 'display'."
        )
    mode = override or spec.network_orientation
    if mode not in ("native", "display") and not geo.is_valid_code(mode, 3):
        raise InputError(
            f"orientation {mode!r} is not an axis code (such as RAS or LPS), 'native' or 'display'."
        )
    if spec.spatial_dims == 2 or ndim == 2 or mode == "display":
        return Layout(_display_permutation(spec, ndim), (), "as displayed")
    source = scan_orientation(affine, ndim)
    if mode == "native":
        if not file_orientation:
            # No file: index the array as nibabel and ITK index files, x first.
            return Layout(tuple(reversed(range(ndim))), (), "as stored (x, y, z)")
        mode = file_orientation.upper()
        described = f"as the file stores it ({mode})"
    else:
        mode = mode.upper()
        described = f"reoriented to {mode}"
    permutation, flipped = geo.reorientation(source, mode)
    return Layout(permutation, flipped, described)


def _display_permutation(spec: ModelSpec, ndim: int) -> tuple[int, ...]:
    """napari's order, with the plane reordered to ``network_axes``; slices stay first."""
    scan = "zyx"[-ndim:]
    axes = spec.axes or "zyx"[-spec.spatial_dims :]
    network = scan[: ndim - spec.spatial_dims] + axes
    return tuple(scan.index(a) for a in network)

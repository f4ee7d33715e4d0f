"""Memory a run needs, estimated from shapes before anything large is allocated."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..limits import binding_limit
from ..models import AttentionUNetBase
from .devices import free_memory, system_memory

GiB = 1024**3


def estimate_memory(
    model: AttentionUNetBase,
    padded: Sequence[int],
    tile: Sequence[int],
    batch: int,
    stack: int,
    attention: bool,
) -> tuple[int, int]:
    """(host bytes, device bytes) a run needs at its peak, roughly and on the safe side."""
    spec = model.spec
    voxels = int(np.prod(padded)) * stack
    host = voxels * 4 * (2 * spec.in_channels + 2 * spec.out_channels + 1)  # input, stitch
    host += voxels * spec.out_channels  # uint8 probabilities
    if attention:
        for g in spec.gates:
            host += voxels // int(np.prod(g.stride)) * 4 * (g.heads + 1)
    tile_voxels = int(np.prod(tile))
    # Activations: each level holds a few feature maps of its width at its resolution.
    per_tile = (
        sum(f * tile_voxels / (2 ** (spec.spatial_dims * i)) for i, f in enumerate(spec.features)) * 4 * 6
    )
    params = sum(p.numel() for p in model.parameters()) * 4 * 2
    return int(host), int(batch * per_tile + params)


def _refuse(needed: int, available: int | None, name: str) -> None:
    if available is not None and needed > 0.9 * available:
        raise InputError(
            f"{name} needs about {needed / GiB:.1f} GiB of memory to predict, but only "
            f"{available / GiB:.1f} GiB is {binding_limit()}; crop the scan, close other programs, or "
            "predict a region (Preview)."
        )


def check_memory(host: int, device_bytes: int, device: torch.device, name: str) -> bool:
    """Raise InputError when the host cannot hold the run; True when the GPU can stitch."""
    _refuse(host + (device_bytes if device.type == "cpu" else 0), system_memory(), name)
    if device.type == "cpu":
        return False
    free = free_memory(device)
    return free is not None and device_bytes + host < 0.8 * free


def check_shape_memory(image, spec, name: str) -> None:
    """Refuse a hopeless volume from its shape alone, before any copy is made."""
    arrays = image if isinstance(image, (list, tuple)) else [image]
    voxels = sum(int(np.prod(np.shape(a))) for a in arrays) // max(len(arrays), 1)
    if len(arrays) == 1:
        voxels //= max(spec.in_channels, 1)
    _refuse(voxels * 4 * (3 * spec.in_channels + 2 * spec.out_channels + 1), system_memory(), name)

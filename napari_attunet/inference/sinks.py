"""Where a run's pieces are merged: the ``Merger`` interface, each gate's grid over the whole
volume, one block's result, and the in-memory block sink.

Every merger has MONAI's Merger interface: ``aggregate(values, location)`` takes one piece where
it lies, ``finalize()`` returns the whole. Tiles merge in ``tiling.Stitcher`` (weighted sums on
the device); blocks in ``MemorySink`` (arrays in memory) or ``store.ZarrSink`` (an OME-Zarr
store). A block sink may also ``write`` a block on the worker that ran it (``on_worker``); the
caller then aggregates what the worker handed back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .postprocess import GateMap


class Merger(Protocol):
    """Pieces of a run in, the whole out (as MONAI's ``Merger``)."""

    def aggregate(self, values: Any, location: Any) -> Any:
        """Take one piece (a tile's values, a block's result) at ``location``."""

    def finalize(self) -> Any:
        """The merged whole, once every piece is in."""


@dataclass(frozen=True)
class GateGrid:
    """Where one gate's whole-volume grid lies, in scan voxels."""

    heads: int
    stride: tuple[float, ...]
    offset: tuple[float, ...]
    cells: tuple[int, ...]
    name: str


def gate_window(grid: GateGrid, region: Sequence[slice], local: GateMap):
    """(slices into the whole gate grid, slices into ``local``) for one block's gate map."""
    dst, src = [], []
    for a, (sl, s, o, n) in enumerate(zip(region, grid.stride, grid.offset, grid.cells, strict=True)):
        first = int(round((sl.start + local.offset[a] - o) / s))
        count = local.data.shape[1 + a]
        lo, hi = max(0, first), min(n, first + count)
        dst.append(slice(lo, max(lo, hi)))
        src.append(slice(lo - first, lo - first + max(0, hi - lo)))
    return (slice(None),) + tuple(dst), (slice(None),) + tuple(src)


@dataclass
class BlockResult:
    """What one block produced (None fields once a sink on the worker has written them)."""

    region: tuple[slice, ...]
    quantized: np.ndarray | None = None
    disagreement: np.ndarray | None = None
    gates: list[GateMap] = field(default_factory=list)
    counts: np.ndarray | None = None  # voxels per label value (written stores)
    device: str = "cpu"
    precision: str = "fp32"
    runtime: str = "torch"


class MemorySink:
    """Whole-volume uint8 probabilities and float32 gate maps in memory."""

    on_worker = True  # threads share the buffers; a remote worker returns its arrays instead

    def __init__(self, channels: int, spatial, gates: list[GateGrid], tta: bool):
        self.quantized = np.zeros((channels,) + tuple(spatial), np.uint8)
        self.disagreement = np.zeros(tuple(spatial), np.uint8) if tta else None
        self.gates = [np.zeros((g.heads,) + g.cells, np.float32) for g in gates]
        self.grids = gates

    def write(self, result: BlockResult) -> BlockResult:
        region = result.region
        assert result.quantized is not None  # a block that ran, not one written elsewhere
        self.quantized[(slice(None),) + region] = result.quantized
        if self.disagreement is not None and result.disagreement is not None:
            self.disagreement[region] = np.asarray(result.disagreement)
        for buf, grid, gate in zip(self.gates, self.grids, result.gates, strict=True):
            dst, src = gate_window(grid, region, gate)
            buf[dst] = gate.data[src]
        return BlockResult(region, device=result.device, precision=result.precision, runtime=result.runtime)

    def aggregate(self, values: BlockResult, location: tuple[slice, ...]) -> None:
        """On the caller: a block's result, unless its worker wrote it already."""
        if values.quantized is not None:
            self.write(values)

    def finalize(self) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """(uint8 probabilities, the flips' disagreement or None, each gate map)."""
        return self.quantized, self.disagreement, self.gates

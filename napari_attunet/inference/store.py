"""An OME-Zarr store (NGFF 0.4, zarr format 2) written block by block as a run goes.

Layout of ``result.zarr``::

    .zattrs            multiscales: the class probabilities (c, [z,] y, x), uint8 (p = q / 255)
    0/                 the probabilities
    labels/attunet/0   the labels (NGFF image-label), per-class colours and names
    uncertainty/0      the uncertainty in [0, 1] as uint8 (q / 255)
    disagreement/0     with TTA: the flips' spread, uint8
    gates/gate<k>/0    each gate map (heads, *grid) float32 on its own grid, its scale and
                       translation in the NGFF coordinate transformations

The store is written under a temporary name next to ``out`` and renamed when every block is
in: an interrupted or cancelled run leaves nothing at ``out``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .postprocess import PROBABILITY_LEVELS, threshold_labels, uncertainty_map

NGFF_VERSION = "0.4"
LABEL_NAME = "attunet"
CHUNK = 128  # the longest chunk axis of the store's arrays
# label colours (RGBA) for values 1, 2, ...; 0 is transparent
COLOURS = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]

_OPEN: dict[tuple[str, str], object] = {}


def _axes(ndim: int, channel: bool, unit: str | None) -> list[dict]:
    axes: list[dict] = [{"name": "c", "type": "channel"}] if channel else []
    for n in "zyx"[-ndim:]:
        axis = {"name": n, "type": "space"}
        if unit:
            axis["unit"] = unit
        axes.append(axis)
    return axes


def multiscales(
    name: str,
    ndim: int,
    channel: bool,
    scale: Sequence[float],
    translation: Sequence[float],
    unit: str | None,
) -> list[dict]:
    """One-level NGFF multiscales metadata for an image of ``ndim`` spatial axes."""
    lead = [1.0] if channel else []
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": _axes(ndim, channel, unit),
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": lead + [float(s) for s in scale]},
                        {
                            "type": "translation",
                            "translation": [0.0] * len(lead) + [float(t) for t in translation],
                        },
                    ],
                }
            ],
            "type": "none",
        }
    ]


def store_chunk(block: int, largest: int = CHUNK) -> int:
    """The largest chunk length up to ``largest`` that divides a block length: blocks then write
    whole chunks of their own (no two workers write one chunk), and small chunks compress in
    parallel and open fast in a viewer."""
    return next(d for d in range(min(block, largest), 0, -1) if block % d == 0)


def check_free(out) -> None:
    """Refuse an output store that exists, before any work is done."""
    if Path(out).exists():
        raise InputError(f"{out} already exists; remove it or choose another output.")


class ZarrSink:
    """Writes blocks into the store; picklable (paths only), so Dask workers write directly."""

    on_worker = True

    def __init__(self, path: str, tmp: str, output: str, thresholds, channels: int, grids: list, tta: bool):
        self.path, self.tmp, self.output = path, tmp, output
        self.thresholds, self.channels = thresholds, channels
        self.grids, self.tta = grids, tta

    @classmethod
    def create(cls, out, spec, plan, spacing, origin, tta: bool, thresholds, name: str):
        import zarr

        path = Path(out)
        check_free(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
        spatial, block = plan.spatial, plan.block
        ndim = len(spatial)
        unit = "millimeter" if spacing is not None else None
        spacing = tuple(float(s) for s in spacing)[-ndim:] if spacing is not None else (1.0,) * ndim
        origin = tuple(float(o) for o in origin)[-ndim:] if origin is not None else (0.0,) * ndim
        chunks = tuple(store_chunk(min(b, n)) for b, n in zip(block, spatial, strict=True))
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        channels = spec.out_channels
        root.create_array(
            "0", shape=(channels,) + spatial, chunks=(channels,) + chunks, dtype="uint8", fill_value=0
        )
        names = list(spec.class_labels)
        root.attrs.update(
            {
                "multiscales": multiscales(f"{name} probabilities", ndim, True, spacing, origin, unit),
                "omero": {
                    "name": f"{name} probabilities",
                    "version": NGFF_VERSION,
                    "channels": [
                        {
                            "label": n,
                            "color": "".join(f"{v:02X}" for v in COLOURS[k % len(COLOURS)]),
                            "active": True,
                            "window": {
                                "start": 0,
                                "end": PROBABILITY_LEVELS,
                                "min": 0,
                                "max": PROBABILITY_LEVELS,
                            },
                        }
                        for k, n in enumerate(names)
                    ],
                },
                "attunet": {
                    "output": spec.output,
                    "class_names": names,
                    "probability_levels": PROBABILITY_LEVELS,
                    "source": name,
                    "tile": list(plan.tile),
                    "block": list(block),
                },
            }
        )
        label_names = (["background"] + names) if spec.output == "sigmoid" else names
        labels = root.require_group("labels")
        labels.attrs.update({"labels": [LABEL_NAME]})
        group = labels.require_group(LABEL_NAME)
        dtype = "uint8" if len(label_names) < 255 else "int16"
        group.create_array("0", shape=spatial, chunks=chunks, dtype=dtype, fill_value=0)
        group.attrs.update(
            {
                "multiscales": multiscales(f"{name} {LABEL_NAME}", ndim, False, spacing, origin, unit),
                "image-label": {
                    "version": NGFF_VERSION,
                    "source": {"image": "../../"},
                    "colors": [
                        {"label-value": k, "rgba": list(COLOURS[(k - 1) % len(COLOURS)]) + [255]}
                        for k in range(1, len(label_names))
                    ],
                    "properties": [{"label-value": k, "class": n} for k, n in enumerate(label_names)],
                },
            }
        )
        extra = ["uncertainty"] + (["disagreement"] if tta else [])
        for key in extra:
            group = root.require_group(key)
            group.create_array("0", shape=spatial, chunks=chunks, dtype="uint8", fill_value=0)
            group.attrs.update(
                {"multiscales": multiscales(f"{name} {key}", ndim, False, spacing, origin, unit)}
            )
        for k, g in enumerate(plan.gates, start=1):
            group = root.require_group("gates").require_group(f"gate{k}")
            gchunks = tuple(
                max(1, int(round(min(b, n) / s))) for b, n, s in zip(block, spatial, g.stride, strict=True)
            )
            group.create_array(
                "0", shape=(g.heads,) + g.cells, chunks=(g.heads,) + gchunks, dtype="float32", fill_value=0.0
            )
            group.attrs.update(
                {
                    "multiscales": multiscales(
                        f"{name} gate {k}",
                        ndim,
                        True,
                        [s * st for s, st in zip(spacing, g.stride, strict=True)],
                        [o + s * off for o, s, off in zip(origin, spacing, g.offset, strict=True)],
                        unit,
                    ),
                    "attunet": {"stride": list(g.stride), "offset": list(g.offset)},
                }
            )
        return cls(str(path), str(tmp), spec.output, thresholds, channels, list(plan.gates), tta)

    # -- on the workers --
    def _array(self, key: str):
        import zarr

        handle = _OPEN.get((self.tmp, key))
        if handle is None:
            handle = zarr.open_array(os.path.join(self.tmp, key), mode="r+", zarr_format=2)
            _OPEN[(self.tmp, key)] = handle
        return handle

    def write(self, result):
        from .blockwise import BlockResult, gate_window

        region = result.region
        q = result.quantized
        self._array("0")[(slice(None),) + region] = q
        labels = threshold_labels(q, self.output, self.thresholds)
        self._array(f"labels/{LABEL_NAME}/0")[region] = labels
        unc = uncertainty_map(q, self.output, result.disagreement)
        self._array("uncertainty/0")[region] = np.round(unc * PROBABILITY_LEVELS).astype(np.uint8)
        if self.tta and result.disagreement is not None:
            self._array("disagreement/0")[region] = result.disagreement
        for k, (grid, gate) in enumerate(zip(self.grids, result.gates, strict=True), start=1):
            dst, src = gate_window(grid, region, gate)
            self._array(f"gates/gate{k}/0")[dst] = gate.data[src]
        counts = np.bincount(labels.reshape(-1).astype(np.int64))
        return BlockResult(
            region, counts=counts, device=result.device, precision=result.precision, runtime=result.runtime
        )

    # -- on the caller --
    def finish(self, results) -> None:
        import zarr

        counts = np.zeros(1, np.int64)
        for r in results:
            if r.counts is not None:
                size = max(counts.size, r.counts.size)
                counts = np.pad(counts, (0, size - counts.size)) + np.pad(r.counts, (0, size - r.counts.size))
        root = zarr.open_group(self.tmp, mode="r+", zarr_format=2)
        meta: dict = dict(root.attrs["attunet"])  # type: ignore[arg-type]
        meta["label_voxels"] = [int(c) for c in counts]
        root.attrs["attunet"] = meta
        _forget(self.tmp)
        if os.path.exists(self.path):
            raise InputError(f"{self.path} appeared while predicting; the result is left at {self.tmp}.")
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        _forget(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _open(self, key: str):
        import zarr

        return zarr.open_array(os.path.join(self.path, key), mode="r", zarr_format=2)

    def probabilities(self):
        return self._open("0")

    def disagreement_array(self):
        return self._open("disagreement/0") if self.tta else None

    def gate_arrays(self) -> list:
        return [self._open(f"gates/gate{k}/0") for k in range(1, len(self.grids) + 1)]


def _forget(tmp: str) -> None:
    for key in [k for k in _OPEN if k[0] == tmp]:
        del _OPEN[key]

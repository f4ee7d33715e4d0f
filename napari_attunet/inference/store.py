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

Chunks (at any shape, prime axis lengths included). Every array's chunk is at least
min(axis, ``CHUNK_LEAST``) and at most ``CHUNK`` voxels (or gate cells) along each spatial axis;
channels and gate heads are whole in each chunk. No two Dask workers write one chunk: a block
writes whole chunks of its own.

- An axis the blocks do not cut (one block along it: every run of up to ``BLOCK_BUDGET`` voxels)
  is cut into the fewest equal chunks of at most ``CHUNK``: 233 voxels are 2 chunks of 117,
  97 voxels one chunk (``whole_axis_chunk``). A store of the MNI152 1 mm grid is 2 x 2 x 2 chunks
  per image.
- On an axis the blocks cut, the chunk is chosen first and the blocks are made whole multiples of
  it, except the last, which ends with the volume. The blocks are also multiples of the window
  step and the network stride (``unit``: fewest windows, gate cells that start on block edges), so
  they are multiples of a *grain* (``block_grain``): the unit itself where it has a divisor in
  [16, 128] (tile 128, overlap 0.5: 64; tile 32, overlap 0.25: 48), else the smallest multiple of a
  unit below 16 that is at least 16, else (a unit above 128 with no divisor in range, e.g. 9 x 151
  with resampling) the largest multiple of the stride up to 128, dropping the alignment with the
  windows (correct, a few more windows). The chunk is then the largest divisor of the block
  length in [16, 128] (``split_chunk``): the grain divides the block, so one exists. A block
  given by hand (``block=``) is rounded up to the grain when it has no such divisor.
- Pyramid level k halves the blocks too: a level is added only while every cut axis' block halves
  exactly and its half still has a chunk in [16, 128] (``pyramid_levels``), so each block writes
  whole chunks of every level.
- Gate maps: on an uncut axis the fewest equal chunks of the gate's cells; on a cut axis, where
  the blocks' first cells are evenly spaced, the largest divisor of that spacing in
  [min(cells, 16), 128] (the block owns its chunks). Where no such divisor exists (small blocks,
  fractional strides after resampling, flipped axes of odd length) the chunk is at least 16 cells
  and spans several blocks: that gate is written by the caller, block after block
  (``ZarrSink.write_shared``, ``chunks_owned``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .postprocess import PROBABILITY_LEVELS, threshold_labels, uncertainty_map
from .sinks import BlockResult, gate_window

NGFF_VERSION = "0.4"
LABEL_NAME = "attunet"
CHUNK = 128  # the longest chunk axis of the store's arrays
CHUNK_LEAST = 16  # the shortest (or the whole axis, where it is shorter)
PYRAMID_SMALLEST = 256  # halved levels are added until the largest axis is at most this
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
    levels: int = 0,
    reduce: str = "mean",
) -> list[dict]:
    """NGFF multiscales metadata for an image of ``ndim`` spatial axes: level 0 and ``levels``
    more, each halving every spatial axis. ``reduce`` says how a level was made: "mean" (its
    voxel is the mean of 2^k level-0 voxels per axis, so it is centred between them) or
    "nearest" (stride subsampling: it is level-0 voxel 2^k i, centred where that voxel is)."""
    lead = [1.0] if channel else []
    datasets = []
    for k in range(levels + 1):
        f = 2**k
        shift = (f - 1) / 2 if reduce == "mean" else 0.0
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": lead + [float(s) * f for s in scale]},
                    {
                        "type": "translation",
                        "translation": [0.0] * len(lead)
                        + [float(t) + float(s) * shift for t, s in zip(translation, scale, strict=True)],
                    },
                ],
            }
        )
    meta: dict = {
        "version": NGFF_VERSION,
        "name": name,
        "axes": _axes(ndim, channel, unit),
        "datasets": datasets,
    }
    meta["type"] = reduce if levels else "none"
    if levels:
        meta["metadata"] = {
            "description": "each level halves every spatial axis: "
            + ("2x2(x2) means" if reduce == "mean" else "every second voxel (labels are never mixed)")
        }
    return [meta]


def pyramid_levels(spatial: Sequence[int], block: Sequence[int]) -> int:
    """How many halved levels to write below level 0: until the largest axis is at most
    ``PYRAMID_SMALLEST``, and only as far as every block (but each axis' last) halves exactly
    into whole chunks of at least ``CHUNK_LEAST``, so each block writes its own chunks of every
    level."""
    levels = 0
    shape = list(spatial)
    while max(shape) > PYRAMID_SMALLEST:
        f = 2 ** (levels + 1)
        if any(b < n and (b % f or split_chunk(b // f) is None) for b, n in zip(block, spatial, strict=True)):
            break
        levels += 1
        shape = [-(-n // 2) for n in shape]
    return levels


def level_shape(spatial: Sequence[int], k: int) -> tuple[int, ...]:
    return tuple(-(-int(n) // 2**k) for n in spatial)


def halve_mean(x: np.ndarray, spatial_axes: int) -> np.ndarray:
    """The mean of each 2 x 2 (x 2) cell of the last ``spatial_axes`` axes (float32; at an odd
    end the last voxel is repeated)."""
    lead = x.ndim - spatial_axes
    pad = [(0, 0)] * lead + [(0, n % 2) for n in x.shape[lead:]]
    if any(p for _, p in pad):
        x = np.pad(x, pad, mode="edge")
    shape = list(x.shape[:lead])
    for n in x.shape[lead:]:
        shape += [n // 2, 2]
    pairs = tuple(lead + 2 * i + 1 for i in range(spatial_axes))
    return x.reshape(shape).mean(axis=pairs, dtype=np.float32)


def level_region(region: Sequence[slice], k: int) -> tuple[slice, ...]:
    f = 2**k
    return tuple(slice(r.start // f, -(-r.stop // f)) for r in region)


def whole_axis_chunk(n: int) -> int:
    """The chunk of an axis no block boundary cuts: the fewest equal chunks of at most
    ``CHUNK`` (97 -> 97, 233 -> 117, 512 -> 128)."""
    return -(-n // -(-n // CHUNK))


def split_chunk(length: int, least: int = CHUNK_LEAST) -> int | None:
    """The largest divisor of a block length in [``least``, ``CHUNK``]: a block of that length
    is whole chunks of its own. None where there is none (a prime, or a length below 16)."""
    return next((d for d in range(min(length, CHUNK), least - 1, -1) if length % d == 0), None)


def block_grain(step: int, stride: int) -> int:
    """What blocks along a cut axis are multiples of: of a store chunk in [16, 128], and where
    possible of the window step and the stride (see the module's docstring)."""
    unit = math.lcm(step, stride)
    if split_chunk(unit) is not None:
        return unit
    if unit < CHUNK_LEAST:
        return -(-CHUNK_LEAST // unit) * unit
    if stride <= CHUNK:  # a unit above 128 with no divisor in range: keep gate cells aligned
        grain = CHUNK // stride * stride
        return grain if grain >= CHUNK_LEAST else -(-CHUNK_LEAST // stride) * stride
    return CHUNK


def level_chunks(spatial: Sequence[int], block: Sequence[int], k: int = 0) -> tuple[int, ...]:
    """The spatial chunk of pyramid level ``k`` of the images (probabilities, labels,
    uncertainty, disagreement) for blocks of ``block`` voxels."""
    chunks = []
    for n, b, m in zip(spatial, block, level_shape(spatial, k), strict=True):
        if b >= n:
            chunks.append(whole_axis_chunk(m))
            continue
        c = split_chunk(b // 2**k)
        if c is None or b % 2**k:
            raise ValueError(f"blocks of {b} voxels are not whole chunks at level {k}")
        chunks.append(c)
    return tuple(chunks)


def gate_chunks(plan, grid) -> tuple[int, ...]:
    """The chunk of a gate map's cells: owned by one block where the blocks' first cells allow
    it (see the module's docstring); ``chunks_owned`` says whether they are."""
    chunks = []
    for a, (n, b) in enumerate(zip(plan.spatial, plan.block, strict=True)):
        cells = grid.cells[a]
        least = min(cells, CHUNK_LEAST)
        if b >= n:
            chunks.append(whole_axis_chunk(cells))
            continue
        bounds = cell_bounds(n, range(0, n, b), grid.stride[a], grid.offset[a], cells)
        spacing = math.gcd(*[c for c in bounds if 0 < c < cells])
        if not spacing:  # every block but the first keeps no cell
            chunks.append(whole_axis_chunk(cells))
            continue
        owned = split_chunk(spacing, least)
        chunks.append(owned or min(cells, CHUNK, -(-least // spacing) * spacing))
    return tuple(chunks)


def cell_bounds(n: int, starts: Sequence[int], stride: float, offset: float, cells: int) -> list[int]:
    """The first gate cell of each block along one axis (blocks start at ``starts``): a block
    keeps the cells centred in it, the first block also those centred before the volume."""
    return [0 if lo == 0 else min(cells, max(0, math.ceil((lo - offset) / stride - 1e-9))) for lo in starts]


def chunks_owned(plan, grid, chunks: Sequence[int]) -> bool:
    """Whether every chunk of a gate map with these chunk lengths lies within one block."""
    for a, (n, b) in enumerate(zip(plan.spatial, plan.block, strict=True)):
        bounds = cell_bounds(n, range(0, n, b), grid.stride[a], grid.offset[a], grid.cells[a])
        if any(c % chunks[a] for c in bounds if c < grid.cells[a]):
            return False
    return True


def check_free(out, overwrite: bool = False) -> None:
    """Refuse an output store before any work is done: a name that is taken (unless
    ``overwrite``), a parent that is a file, a folder that cannot be written."""
    from ..scans.outputs import OutputError, OutputExists, _reason

    path = Path(out).expanduser()
    parent = next((p for p in path.parents if os.path.lexists(p)), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(
            f"cannot write {path}: {parent} is a file, not a folder; choose an output store in a folder."
        )
    if os.path.lexists(path) and not overwrite:
        raise OutputExists(
            f"{out} already exists; remove it, choose another output, or pass overwrite=True "
            "(--overwrite) to replace it once the new result is complete."
        )
    if parent is None:
        return
    try:  # the nearest folder that exists must take a new folder (parents are made later)
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=parent))
    except OSError as exc:
        raise OutputError(
            f"cannot write {path} ({_reason(exc, parent)} in {parent}); choose a folder you can "
            "write to. Nothing was written."
        ) from None


def _gone(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def world_metadata(affine, spacing, origin, spatial, out) -> tuple[dict, tuple[str, ...]]:
    """The "attunet" metadata placing the store in world (``affine``: level-0 index -> world mm,
    LPS, napari axis order), and a note when NGFF's own scale and translation place it elsewhere
    (a rotated scan: NGFF 0.4 has no affine)."""
    if affine is None:
        return {}, ()
    world = np.asarray(affine, dtype=float)
    n = world.shape[0] - 1
    ngff = np.eye(n + 1)
    ngff[:n, :n] = np.diag(spacing)
    ngff[:n, n] = origin
    corners = np.array([[*c, 1.0] for c in np.ndindex(*(2,) * n)]) * [*(np.subtract(spatial, 1)), 1.0]
    off = float(np.linalg.norm((corners @ (world - ngff).T)[:, :n], axis=1).max())
    meta = {
        "affine": world.tolist(),
        "affine_frame": "level-0 array index to world mm (LPS, array axis order)",
    }
    if off <= 1e-6:
        return meta, ()
    return meta, (
        f"{out} keeps the scan's rotation only in its 'attunet' metadata (NGFF 0.4 has no affine): "
        f"viewers other than napari-attunet show it unrotated, up to {off:.1f} mm from the scan",
    )


class ZarrSink:
    """Writes blocks into the store; picklable (paths only), so Dask workers write directly."""

    on_worker = True
    notes: tuple[str, ...] = ()  # for the run's Prediction.notes

    def __init__(
        self,
        path: str,
        tmp: str,
        output: str,
        thresholds,
        channels: int,
        grids: list,
        tta: bool,
        levels: int = 0,
        owned: Sequence[bool] = (),
    ):
        self.path, self.tmp, self.output = path, tmp, output
        self.thresholds, self.channels = thresholds, channels
        self.grids, self.tta, self.levels = grids, tta, levels
        # per gate: whether each of its chunks lies in one block (a worker may write it); the
        # others are written by the caller, one block after another
        self.owned = list(owned) or [True] * len(grids)
        self.counts = np.zeros(1, np.int64)  # voxels per label value, from the blocks so far
        self.overwrite = False  # replace what is at ``path`` once the store is whole

    @classmethod
    def create(cls, options, spec, plan, origin) -> ZarrSink:
        """An empty store at a hidden name next to ``options.out`` (whole, or nothing: a full
        disk or an interrupt removes it). ``options.affine``: the scan's index -> world matrix
        (``geometry``); NGFF 0.4 has none, so a rotation it holds is kept in the "attunet"
        metadata, which this plugin's reader applies."""
        from ..scans.outputs import held_interrupts, owned_prefix

        path, overwrite = Path(options.out).expanduser(), options.overwrite
        check_free(path, overwrite)
        tmp = path.with_name(owned_prefix(f".{path.name}.partial-") + uuid.uuid4().hex[:8])
        try:  # an interrupt held back while zarr writes is raised at the end of ``with``
            with held_interrupts():
                path.parent.mkdir(parents=True, exist_ok=True)
                sink = cls._layout(path, tmp, spec, plan, origin, options)
        except BaseException as exc:
            _forget(str(tmp))
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _write_error(path, exc) from None
            raise
        sink.overwrite = overwrite
        return sink

    @classmethod
    def _layout(cls, path: Path, tmp: Path, spec, plan, origin, options):
        spacing, tta, thresholds, name, affine = (
            options.spacing,
            options.tta,
            options.thresholds,
            options.name,
            options.affine,
        )
        import zarr

        spatial, block = plan.spatial, plan.block
        ndim = len(spatial)
        unit = "millimeter" if spacing is not None else None
        spacing = tuple(float(s) for s in spacing)[-ndim:] if spacing is not None else (1.0,) * ndim
        if origin is None and affine is not None:
            origin = np.asarray(affine, dtype=float)[:ndim, ndim]
        origin = tuple(float(o) for o in origin)[-ndim:] if origin is not None else (0.0,) * ndim
        world = world_metadata(affine, spacing, origin, spatial, path)
        levels = pyramid_levels(spatial, block)
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        channels = spec.out_channels

        def arrays(group, dtype, lead: tuple[int, ...] = ()) -> None:
            for k in range(levels + 1):  # each block's part of a level is whole chunks
                chunks = level_chunks(spatial, block, k)
                shape = lead + level_shape(spatial, k)
                group.create_array(str(k), shape=shape, chunks=lead + chunks, dtype=dtype, fill_value=0)

        arrays(root, "uint8", (channels,))
        names = list(spec.class_labels)
        root.attrs.update(
            {
                "multiscales": multiscales(
                    f"{name} probabilities", ndim, True, spacing, origin, unit, levels
                ),
                "omero": _omero(f"{name} probabilities", names),
                "attunet": {
                    "output": spec.output,
                    "class_names": names,
                    "probability_levels": PROBABILITY_LEVELS,
                    "source": name,
                    "tile": list(plan.tile),
                    "block": list(block),
                    **world[0],
                },
            }
        )
        label_names = (["background"] + names) if spec.output == "sigmoid" else names
        labels = root.require_group("labels")
        labels.attrs.update({"labels": [LABEL_NAME]})
        group = labels.require_group(LABEL_NAME)
        dtype = "uint8" if len(label_names) < 255 else "int16"
        arrays(group, dtype)
        group.attrs.update(
            {
                "multiscales": multiscales(
                    f"{name} {LABEL_NAME}", ndim, False, spacing, origin, unit, levels, "nearest"
                ),
                "image-label": _image_label(label_names),
            }
        )
        extra = ["uncertainty"] + (["disagreement"] if tta else [])
        for key in extra:
            group = root.require_group(key)
            arrays(group, "uint8")
            group.attrs.update(
                {"multiscales": multiscales(f"{name} {key}", ndim, False, spacing, origin, unit, levels)}
            )
        owned = [
            _gate_array(root, k, g, plan, name, spacing, origin, unit) for k, g in enumerate(plan.gates, 1)
        ]
        sink = cls(
            str(path), str(tmp), spec.output, thresholds, channels, list(plan.gates), tta, levels, owned
        )
        sink.notes = world[1]
        return sink

    # -- on the workers --
    def _array(self, key: str):
        import zarr

        handle = _OPEN.get((self.tmp, key))
        if handle is None:
            handle = zarr.open_array(os.path.join(self.tmp, key), mode="r+", zarr_format=2)
            _OPEN[(self.tmp, key)] = handle
        return handle

    def write(self, result):
        region = result.region
        q = result.quantized
        labels = threshold_labels(q, self.output, self.thresholds)
        unc = np.round(uncertainty_map(q, self.output, result.disagreement) * PROBABILITY_LEVELS)
        images = [("0", q), (f"labels/{LABEL_NAME}/0", labels), ("uncertainty/0", unc.astype(np.uint8))]
        if self.tta and result.disagreement is not None:
            images.append(("disagreement/0", result.disagreement))
        for key, data in images:
            self._write_levels(key[:-1], data, region, nearest=key.startswith("labels/"))
        left = []
        for k, (grid, gate, owned) in enumerate(
            zip(self.grids, result.gates, self.owned, strict=True), start=1
        ):
            if owned:
                dst, src = gate_window(grid, region, gate)
                self._array(f"gates/gate{k}/0")[dst] = gate.data[src]
            left.append(None if owned else gate)
        counts = np.bincount(labels.reshape(-1).astype(np.int64))
        return BlockResult(
            region,
            gates=left if not all(self.owned) else [],
            counts=counts,
            device=result.device,
            precision=result.precision,
            runtime=result.runtime,
        )

    def write_shared(self, result) -> None:
        """On the caller: the gate maps whose chunks this block shares with a neighbour. Two
        workers writing parts of one chunk at once would each rewrite the whole chunk, and one
        part would be lost."""
        for k, (grid, gate) in enumerate(zip(self.grids, result.gates, strict=True), start=1):
            if gate is not None:
                dst, src = gate_window(grid, result.region, gate)
                self._array(f"gates/gate{k}/0")[dst] = gate.data[src]
        result.gates = []

    def _write_levels(self, prefix: str, data: np.ndarray, region, nearest: bool) -> None:
        """Level 0 of one image and this block's part of each halved level."""
        lead = (slice(None),) * (data.ndim - len(region))
        self._array(f"{prefix}0")[lead + tuple(region)] = data
        level = data if nearest else data.astype(np.float32)
        for k in range(1, self.levels + 1):
            if nearest:  # every second voxel: 0, 2, 4... of the whole volume (blocks start even)
                level = level[lead + (slice(None, None, 2),) * len(region)]
                values = level
            else:  # means of means (float32) are the means of the 2^k cells, rounded once
                level = halve_mean(level, len(region))
                values = np.round(level).astype(data.dtype)
            self._array(f"{prefix}{k}")[lead + level_region(region, k)] = values

    # -- on the caller --
    def aggregate(self, values, location) -> None:
        """On the caller: a block's label counts, and the gate maps it shares with a neighbour
        (a worker wrote the rest); a block that ran on the caller is written first."""
        if values.quantized is not None:
            values = self.write(values)
        if values.gates:
            self.write_shared(values)
        if values.counts is not None:
            size = max(self.counts.size, values.counts.size)
            self.counts = np.pad(self.counts, (0, size - self.counts.size)) + np.pad(
                values.counts, (0, size - values.counts.size)
            )

    def finalize(self):
        """The store made whole and moved into place; (its probabilities, disagreement and gate
        maps, read from it)."""
        self._finish()
        return self.probabilities(), self.disagreement_array(), self.gate_arrays()

    def _finish(self) -> None:
        import zarr

        from ..scans.outputs import held_interrupts

        counts = self.counts
        with held_interrupts():  # the store is whole, then in place, or not there at all
            try:
                root = zarr.open_group(self.tmp, mode="r+", zarr_format=2)
                meta: dict = dict(root.attrs["attunet"])  # type: ignore[arg-type]
                meta["label_voxels"] = [int(c) for c in counts]
                root.attrs["attunet"] = meta
                _forget(self.tmp)
                self._move_in()
            except OSError as exc:
                self.discard()
                raise _write_error(Path(self.path), exc) from None

    def _move_in(self) -> None:
        """Rename the whole store to ``path``; with ``overwrite``, what was there is renamed
        aside first and removed only once the new store is in place."""
        from ..scans.outputs import OutputExists, owned_prefix

        if not os.path.lexists(self.path):
            os.rename(self.tmp, self.path)
            return
        if not self.overwrite:
            raise OutputExists(f"{self.path} appeared while predicting; the result is left at {self.tmp}.")
        old = os.path.join(
            os.path.dirname(self.path),
            owned_prefix(f".{os.path.basename(self.path)}.old-") + uuid.uuid4().hex[:8],
        )
        os.rename(self.path, old)
        try:
            os.rename(self.tmp, self.path)
        except OSError:
            os.rename(old, self.path)
            raise
        _gone(old)

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


def _write_error(path: Path, exc: OSError):
    """One sentence for a store that could not be written (its partial copy is gone)."""
    from ..scans.outputs import OutputError, _reason

    return OutputError(
        f"{path} could not be written ({_reason(exc, path.parent)}); nothing was written and "
        "any store already there is unchanged."
    )


def is_write_error(exc: BaseException, sink: ZarrSink) -> bool:
    """Whether an error of a run came from writing its store (not from reading the input)."""
    import errno

    if not isinstance(exc, OSError):
        return False
    disk = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
    name = str(getattr(exc, "filename", "") or "")
    return exc.errno in disk or (bool(name) and name.startswith(sink.tmp))


def _omero(name: str, names: list[str]) -> dict:
    """The OMERO rendering metadata of the probabilities: one coloured channel per class."""
    window = {"start": 0, "end": PROBABILITY_LEVELS, "min": 0, "max": PROBABILITY_LEVELS}
    channels = [
        {
            "label": n,
            "color": "".join(f"{v:02X}" for v in COLOURS[k % len(COLOURS)]),
            "active": True,
            "window": window,
        }
        for k, n in enumerate(names)
    ]
    return {"name": name, "version": NGFF_VERSION, "channels": channels}


def _image_label(label_names: list[str]) -> dict:
    """NGFF image-label metadata: each label value's colour and class name."""
    return {
        "version": NGFF_VERSION,
        "source": {"image": "../../"},
        "colors": [
            {"label-value": k, "rgba": list(COLOURS[(k - 1) % len(COLOURS)]) + [255]}
            for k in range(1, len(label_names))
        ],
        "properties": [{"label-value": k, "class": n} for k, n in enumerate(label_names)],
    }


def _gate_array(root, k: int, grid, plan, name: str, spacing, origin, unit) -> bool:
    """Gate ``k``'s array on its own grid, placed by its stride and offset; returns whether each
    of its chunks lies in one block (a worker may write it)."""
    group = root.require_group("gates").require_group(f"gate{k}")
    chunks = gate_chunks(plan, grid)
    group.create_array(
        "0", shape=(grid.heads,) + grid.cells, chunks=(grid.heads,) + chunks, dtype="float32", fill_value=0.0
    )
    group.attrs.update(
        {
            "multiscales": multiscales(
                f"{name} gate {k}",
                len(spacing),
                True,
                [s * st for s, st in zip(spacing, grid.stride, strict=True)],
                [o + s * off for o, s, off in zip(origin, spacing, grid.offset, strict=True)],
                unit,
            ),
            "attunet": {"stride": list(grid.stride), "offset": list(grid.offset)},
        }
    )
    return chunks_owned(plan, grid, chunks)


def _forget(tmp: str) -> None:
    for key in [k for k in _OPEN if k[0] == tmp]:
        del _OPEN[key]

"""OME-Zarr stores at shapes that are not round: prime axis lengths, short axes, blocks that end
with the volume. Every array's chunk is at least min(axis, 16) and at most 128 along each spatial
axis, each block writes whole chunks of its own (of every pyramid level, and of the gate maps it
owns), the file count stays small, and the store holds what one in-memory run gives."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from helpers import make_model, monai_spec, official_spec, sharpen_gates
from scipy import ndimage

import napari_attunet as na
from napari_attunet.inference import blockwise, store
from napari_attunet.inference.blockwise import plan

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

pytestmark = pytest.mark.usefixtures("torch_single_thread")

OPTIONS = dict(tile=32, overlap=0.25, normalization="zscore", precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def model3d():
    """Five levels (stride 16, three gates), few features: cheap on a shared machine."""
    return sharpen_gates(make_model(official_spec(3, features=(2, 4, 8, 8, 8)), seed=3))


@pytest.fixture(scope="module")
def prime_scan(tmp_path_factory, model3d):
    """The issue's (61, 131, 97) float32 zarr and its in-memory run (tile 32, overlap 0.25)."""
    array, image = _scan(tmp_path_factory.mktemp("prime"), (61, 131, 97))
    return array, na.predict(image, model3d, **OPTIONS)


def _scan(tmp_path, shape, seed=0):
    """A smooth float32 volume as a zarr array on disk, and the same voxels in memory."""
    rng = np.random.default_rng(seed)
    image = (ndimage.gaussian_filter(rng.normal(size=shape), 2.0) * 4000).astype(np.float32)
    array = zarr.create_array(tmp_path / "scan.zarr", shape=shape, chunks=(32, 64, 64), dtype="float32")
    array[:] = image
    return zarr.open_array(tmp_path / "scan.zarr", mode="r"), image


def _arrays(path) -> dict[str, object]:
    """Every array of a store by its path."""
    root = zarr.open_group(str(path), mode="r")
    found = {}

    def walk(group, prefix):
        for key, member in group.members():
            if isinstance(member, zarr.Array):
                found[prefix + key] = member
            else:
                walk(member, prefix + key + "/")

    walk(root, "")
    return found


def _files(path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def _check_chunks(path, ndim: int) -> None:
    """Each array's spatial chunk in [min(axis, 16), 128]; channels and gate heads whole."""
    for key, array in _arrays(path).items():
        lead = array.ndim - ndim
        assert array.chunks[:lead] == array.shape[:lead], key
        for n, c in zip(array.shape[lead:], array.chunks[lead:], strict=True):
            assert min(n, 16) <= c <= 128, (key, array.shape, array.chunks)


def _check_owned(work, path) -> None:
    """Each block's part of each image level starts and ends on chunk edges (or the volume's
    end), so no two workers ever write one chunk."""
    arrays = _arrays(path)
    levels = store.pyramid_levels(work.spatial, work.block)
    for k in range(levels + 1):
        array = arrays[f"labels/attunet/{k}"]
        for block in work.blocks:
            for r, n, c in zip(store.level_region(block.region, k), array.shape, array.chunks, strict=True):
                assert r.start % c == 0 and (r.stop % c == 0 or r.stop == n), (k, block.region, array.chunks)


@pytest.mark.parametrize("block", [None, 64], ids=["auto", "block64"])
def test_a_prime_shaped_store_holds_the_in_memory_run(tmp_path, model3d, prime_scan, block):
    """The issue's (61, 131, 97) float32 zarr, tile 32, overlap 0.25: labels and gate maps equal
    the in-memory run's, every chunk is in [min(axis, 16), 128], blocks own their chunks, and the
    store has few files (243,000 at the MNI152 1 mm grid when a prime length made chunks of 1)."""
    array, ref = prime_scan
    out = tmp_path / "r.zarr"
    pred = na.predict(array, model3d, out=out, block=block, workers=2, **OPTIONS)
    work = plan(array.shape, model3d, tile=32, overlap=0.25, block=block, store=True)
    assert pred.notes[0].startswith(f"predicted in {len(work.blocks)} block(s)")
    assert len(work.blocks) == (1 if block is None else 1 * 3 * 2)
    assert np.array_equal(zarr.open_array(str(out / "labels" / "attunet" / "0"))[:], ref.labels())
    assert np.abs(pred.quantized[:].astype(int) - ref.quantized.astype(int)).max() <= 1
    assert max(g.data.std() for g in ref.gates) > 0.01  # maps that vary: the comparison means something
    for k, theirs in enumerate(ref.gates, start=1):
        mine = zarr.open_array(str(out / "gates" / f"gate{k}" / "0"), mode="r")
        assert mine.shape == theirs.data.shape
        assert np.abs(mine[:] - theirs.data).max() < 1e-4
    _check_chunks(out, 3)
    _check_owned(work, out)
    assert _files(out) <= 60
    if block is None:  # one block: the fewest equal chunks of at most 128 (131 -> 2 x 66)
        assert zarr.open_array(str(out / "0")).chunks == (2, 61, 66, 97)
    else:  # blocks of 64: chunks of 64 where they cut, whole where they do not (61)
        assert zarr.open_array(str(out / "0")).chunks == (2, 61, 64, 64)


def test_gate_chunks_are_whole_on_short_axes(tmp_path, model3d):
    """The issue's odd gate chunk (15 cells on a 16-long axis): a gate axis no block cuts is
    one chunk up to 128 cells, in the fewest equal chunks above."""
    array, _ = _scan(tmp_path, (31, 33, 263))  # one block: no axis is cut
    out = tmp_path / "r.zarr"
    na.predict(array, model3d, out=out, **OPTIONS)
    for key, cells, chunks in [
        ("gates/gate1/0", (16, 17, 132), (16, 17, 66)),
        ("gates/gate2/0", (8, 9, 66), (8, 9, 66)),
        ("0", (31, 33, 263), (31, 33, 88)),
    ]:
        a = zarr.open_array(str(out / key), mode="r")
        assert a.shape[1:] == cells and a.chunks[1:] == chunks


def test_automatic_blocks_on_prime_axes_are_whole_chunks(tmp_path, model3d, monkeypatch):
    """With a small block budget the automatic plan cuts prime axes: blocks are multiples of
    the chunk (except the last), the store equals the in-memory run."""
    monkeypatch.setattr(blockwise, "BLOCK_BUDGET", 40**3)
    array, image = _scan(tmp_path, (23, 83, 59), seed=2)
    work = plan(array.shape, model3d, tile=32, overlap=0.25, store=True)
    assert len(work.blocks) > 1 and any(b < n for b, n in zip(work.block, work.spatial, strict=True))
    ref = na.predict(image, model3d, **OPTIONS)
    out = tmp_path / "r.zarr"
    na.predict(array, model3d, out=out, workers=2, **OPTIONS)
    assert np.array_equal(zarr.open_array(str(out / "labels" / "attunet" / "0"))[:], ref.labels())
    _check_chunks(out, 3)
    _check_owned(work, out)


def test_a_pyramid_on_prime_axes_stops_before_chunks_below_16(tmp_path, model3d, monkeypatch):
    """Levels halve every block exactly, into whole chunks of at least 16 voxels: blocks of 64
    give levels of 32 and 16 voxels per block, and no third level (8 < 16)."""
    monkeypatch.setattr(store, "PYRAMID_SMALLEST", 16)
    array, image = _scan(tmp_path, (11, 97, 71), seed=3)
    out = tmp_path / "r.zarr"
    na.predict(array, model3d, out=out, block=64, workers=2, **OPTIONS)
    ref = na.predict(image, model3d, **OPTIONS)
    work = plan(array.shape, model3d, tile=32, overlap=0.25, block=64, store=True)
    arrays = _arrays(out)
    assert sorted(k for k in arrays if k.startswith("labels/")) == [f"labels/attunet/{k}" for k in range(3)]
    for k in range(3):
        f = 2**k
        assert np.array_equal(arrays[f"labels/attunet/{k}"][:], ref.labels()[::f, ::f, ::f])
    assert arrays["0"].chunks == (2, 11, 64, 64) and arrays["2"].chunks == (2, 3, 16, 16)
    _check_chunks(out, 3)
    _check_owned(work, out)


def test_a_2d_network_on_a_prime_stack(tmp_path):
    """A 2D network over 7 slices of 53 x 67: a block of 2 slices asked for by hand becomes
    whole chunks (the 7 slices), the store equals the in-memory run."""
    model = make_model(monai_spec(2, features=(4, 8, 16)), seed=1)
    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(rng.normal(size=(7, 53, 67)), (0, 2, 2)).astype(np.float32)
    ref = na.predict(image, model, tile=16, normalization="zscore")
    out = tmp_path / "r.zarr"
    na.predict(
        da.from_array(image, chunks=(2, 16, 16)),
        model,
        tile=16,
        normalization="zscore",
        block=(2, 16, 16),
        out=out,
    )
    work = plan(image.shape, model, tile=16, block=(2, 16, 16), store=True)
    assert work.block[0] == 16 and len(work.blocks) == 4 * 5
    assert np.array_equal(zarr.open_array(str(out / "labels" / "attunet" / "0"))[:], ref.labels())
    _check_chunks(out, 3)
    _check_owned(work, out)


@pytest.mark.parametrize("shape", [(61, 131, 97), (197, 233, 189), (17, 389, 263), (509, 131, 13)])
@pytest.mark.parametrize("tile,overlap", [(32, 0.25), (96, 0.5), (128, 0.5), (64, 0.3)])
def test_every_plan_cuts_whole_chunks(model3d, shape, tile, overlap, monkeypatch):
    """No inference: for prime and odd shapes, tiles and overlaps, automatic blocks (a budget
    that cuts them) and blocks given by hand, every block but an axis' last is a whole number of
    chunks of every level, and every chunk of images and gates is in [min(axis, 16), 128]."""
    monkeypatch.setattr(blockwise, "BLOCK_BUDGET", 64**3)
    for block in (None, 16, 40, 100):
        work = plan(shape, model3d, tile=tile, overlap=overlap, block=block, store=True)
        levels = store.pyramid_levels(work.spatial, work.block)
        for k in range(levels + 1):
            chunks = store.level_chunks(work.spatial, work.block, k)
            for n, b, c, m in zip(shape, work.block, chunks, store.level_shape(shape, k), strict=True):
                assert min(m, 16) <= c <= 128
                assert b >= n or (b % 2**k == 0 and (b // 2**k) % c == 0)
        for grid in work.gates:
            chunks = store.gate_chunks(work, grid)
            for cells, c in zip(grid.cells, chunks, strict=True):
                assert min(cells, 16) <= c <= 128
            spacing = [int(b // s) if b % s == 0 else 0 for b, s in zip(work.block, grid.stride, strict=True)]
            if all(
                b >= n or (q and store.split_chunk(q, min(cells, 16)))
                for b, n, q, cells in zip(work.block, shape, spacing, grid.cells, strict=True)
            ):  # every block holds whole chunks of cells of its own
                assert store.chunks_owned(work, grid, chunks)


@pytest.mark.parametrize(
    "step,stride", [(24, 16), (64, 16), (8, 8), (1, 1), (37, 12), (151, 9), (262, 2), (3, 3), (131, 131)]
)
def test_block_grain_has_a_chunk_in_range(step, stride):
    """The grain of a cut axis is a multiple of a chunk in [16, 128]; of the window step and the
    stride too where their multiple has such a divisor, of the stride where it is at most 128."""
    grain = store.block_grain(step, stride)
    chunk = store.split_chunk(grain)
    assert chunk is not None and 16 <= chunk <= 128 and grain % chunk == 0
    unit = math.lcm(step, stride)
    if any(unit % d == 0 for d in range(16, 129)):
        assert grain == unit
    elif stride <= 128:
        assert grain % stride == 0


def test_whole_axis_chunks_are_the_fewest_equal_ones():
    for n, expected in [(1, 1), (15, 15), (16, 16), (97, 97), (128, 128), (131, 66), (233, 117), (257, 86)]:
        assert store.whole_axis_chunk(n) == expected
    for n in range(1, 2000):
        c = store.whole_axis_chunk(n)
        assert c <= 128 and math.ceil(n / c) == math.ceil(n / 128)
    assert all(store.split_chunk(p) is None for p in (131, 197, 233))


def test_automatic_blocks_of_a_2d_stack_hold_16_slices(monkeypatch):
    """A 2D network over a stack whose planes fill the budget: the plane is cut so that a block
    still holds 16 slices (whole chunks of at least 16), within the budget."""
    model = make_model(monai_spec(2, features=(4, 8, 16)), seed=1)
    monkeypatch.setattr(blockwise, "BLOCK_BUDGET", 16 * 40 * 40)
    shape = (53, 97, 131)
    work = plan(shape, model, tile=16, store=True)
    assert work.block[0] == 16 and len(work.blocks) > 4
    for block in work.blocks:
        assert math.prod(o.stop - o.start for o in block.outer) <= blockwise.BLOCK_BUDGET
    chunks = store.level_chunks(shape, work.block)
    assert chunks[0] == 16 and all(16 <= c <= 128 for c in chunks)

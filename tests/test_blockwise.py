"""Block by block on Dask: lazy inputs, seams, the OME-Zarr store."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import make_model, monai_spec, official_spec, sharpen_gates
from scipy import ndimage

import napari_attunet as na
from napari_attunet.inference.blockwise import plan

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def model3d():
    return sharpen_gates(make_model(official_spec(3, features=(4, 8, 16, 32, 64)), seed=3))


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(7)
    smooth = ndimage.gaussian_filter(rng.normal(size=(48, 72, 88)), 2.0)
    return (smooth * 4000 + 300).astype(np.int16)


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else 2.0 * (x & y).sum() / total


def test_blocks_agree_with_one_in_memory_run(model3d, volume):
    """>= 8 blocks: probabilities, labels and every gate map equal the in-memory run's."""
    options = dict(tile=32, normalization="zscore", spacing=(2.0, 1.0, 1.0))
    ref = na.predict(volume, model3d, **options)
    work = plan(volume.shape, model3d, tile=32, block=32)
    assert len(work.blocks) >= 8
    lazy = na.predict(da.from_array(volume, chunks=(16, 24, 24)), model3d, block=32, **options)
    assert lazy.quantized.shape == ref.quantized.shape
    assert np.abs(lazy.quantized.astype(int) - ref.quantized.astype(int)).max() <= 1
    labels, expected = lazy.labels(), ref.labels()
    for value in range(model3d.spec.out_channels):
        assert _dice(labels, expected, value) >= 0.999
    assert len(lazy.gates) == len(ref.gates) == 3
    for mine, theirs in zip(lazy.gates, ref.gates, strict=True):
        assert mine.stride == theirs.stride and mine.offset == theirs.offset
        assert mine.data.shape == theirs.data.shape
        assert theirs.data.std() > 0.01  # the maps vary, so the comparison means something
        assert np.abs(mine.data - theirs.data).max() < 1e-4
    assert np.allclose(lazy.uncertainty, ref.uncertainty, atol=0.02)


@pytest.mark.parametrize(
    "options",
    [
        dict(overlap=0.25),
        dict(overlap=0.6, orientation="RAS"),
        dict(overlap=0.5, orientation="RAS", tta=True),
    ],
    ids=["overlap-0.25", "reoriented", "reoriented-tta"],
)
def test_blocks_agree_on_reoriented_scans_and_any_overlap(model3d, options):
    """Flipped and permuted network axes, other overlaps, TTA: still one in-memory run."""
    affine = np.diag([-2.0, 1.0, -1.0, 1.0])
    affine[:3, 3] = (10.0, 0.0, 5.0)
    image = np.random.default_rng(1).normal(size=(36, 40, 52)).astype(np.float32)
    if "orientation" in options:
        options = dict(options, affine=affine)
    ref = na.predict(image, model3d, tile=32, **options)
    pred = na.predict(da.from_array(image, chunks=16), model3d, tile=32, block=16, **options)
    assert np.abs(pred.quantized.astype(int) - ref.quantized.astype(int)).max() <= 1
    if options.get("tta"):
        assert np.abs(pred.disagreement.astype(int) - ref.disagreement.astype(int)).max() <= 1
    for mine, theirs in zip(pred.gates, ref.gates, strict=True):
        assert mine.offset == theirs.offset and mine.data.shape == theirs.data.shape
        assert np.abs(mine.data - theirs.data).max() < 1e-4


def test_seams_of_a_2d_model_on_a_stack():
    """A 2D network over the slices of a zarr volume: blocks along every axis, no seams."""
    model = make_model(monai_spec(2, features=(4, 8, 16)), seed=1)
    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(rng.normal(size=(6, 40, 56)), (0, 2, 2)).astype(np.float32)
    ref = na.predict(image, model, tile=16, normalization="zscore")
    store = zarr.create_array(
        zarr.storage.MemoryStore(), shape=image.shape, chunks=(2, 16, 16), dtype="float32"
    )
    store[:] = image
    lazy = na.predict(store, model, tile=16, normalization="zscore", block=(2, 16, 16))
    assert len(plan(image.shape, model, tile=16, block=(2, 16, 16)).blocks) == 3 * 3 * 4
    assert np.abs(lazy.quantized.astype(int) - ref.quantized.astype(int)).max() <= 1
    for mine, theirs in zip(lazy.gates, ref.gates, strict=True):
        assert mine.data.shape == theirs.data.shape
        assert np.abs(mine.data - theirs.data).max() < 1e-4


class GuardedArray:
    """A zarr array that counts its reads and refuses one of the whole volume."""

    def __init__(self, array):
        self.array, self.reads, self.largest = array, 0, 0
        self.shape, self.dtype, self.chunks, self.ndim = (array.shape, array.dtype, array.chunks, array.ndim)

    def __getitem__(self, index):
        data = self.array[index]
        if data.size >= int(np.prod(self.shape)):
            raise AssertionError("the whole volume was read at once")
        self.reads += 1
        self.largest = max(self.largest, data.size)
        return data

    def __array__(self, *args, **kwargs):
        raise AssertionError("np.asarray on the whole volume")


class CountedArray:
    """A zarr array that counts its reads."""

    def __init__(self, array):
        self.array, self.reads = array, 0
        self.shape, self.dtype, self.chunks, self.ndim = (array.shape, array.dtype, array.chunks, array.ndim)

    def __getitem__(self, index):
        self.reads += 1
        return self.array[index]


@pytest.mark.parametrize("mode", ["zscore", "percentile"])
def test_zarr_input_is_read_window_by_window(tmp_path, model3d, volume, mode, monkeypatch):
    from napari_attunet.inference import lazy

    monkeypatch.setattr(lazy, "SLAB_VOXELS", 48 * 72 * 88 // 4)  # statistics in 4+ slabs
    array = zarr.create_array(
        tmp_path / "scan.zarr", shape=volume.shape, chunks=(16, 24, 24), dtype=volume.dtype
    )
    array[:] = volume
    guarded = GuardedArray(zarr.open_array(tmp_path / "scan.zarr", mode="r"))
    ref = na.predict(volume, model3d, tile=32, normalization=mode)
    pred = na.predict(guarded, model3d, tile=32, normalization=mode, block=32)
    blocks = plan(volume.shape, model3d, tile=32, block=32).blocks
    assert guarded.reads > len(blocks) >= 8  # statistics, then each block's own crop
    assert guarded.largest <= max(np.prod([s.stop - s.start for s in b.outer]) for b in blocks)
    if mode == "zscore":  # exact chunked float64 moments: the very same statistics
        assert np.abs(pred.quantized.astype(int) - ref.quantized.astype(int)).max() <= 1
    else:  # the same strided sample, so the same percentiles
        assert np.array_equal(pred.labels(), ref.labels())


def test_a_nan_in_a_lazy_volume_is_one_sentence(model3d):
    image = np.zeros((32, 32, 32), np.float32)
    image[5, 6, 7] = np.nan
    with pytest.raises(na.InputError, match="NaN"):
        na.predict(da.from_array(image, chunks=16), model3d, tile=32, normalization="zscore")


def test_store_holds_what_the_run_returns(tmp_path, model3d, volume):
    out = tmp_path / "result.zarr"
    ref = na.predict(volume, model3d, tile=32, normalization="zscore", spacing=(2.0, 1.0, 1.0))
    pred = na.predict(
        da.from_array(volume, chunks=24),
        model3d,
        tile=32,
        normalization="zscore",
        spacing=(2.0, 1.0, 1.0),
        block=32,
        out=out,
    )
    root = zarr.open_group(out, mode="r")
    assert np.array_equal(root["0"][:], pred.quantized[:])
    assert np.abs(root["0"][:].astype(int) - ref.quantized.astype(int)).max() <= 1
    assert np.array_equal(root["labels/attunet/0"][:], ref.labels())
    unc = root["uncertainty/0"][:].astype(np.float32) / 255
    assert np.abs(unc - ref.uncertainty).max() <= 1 / 255 + 0.02
    for k, gate in enumerate(ref.gates, start=1):
        assert np.abs(root[f"gates/gate{k}/0"][:] - gate.data).max() < 1e-4
    counts = np.bincount(ref.labels().reshape(-1))
    assert root.attrs["attunet"]["label_voxels"][: len(counts)] == counts.tolist()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    with pytest.raises(na.InputError, match="already exists"):
        na.predict(volume, model3d, tile=32, block=32, out=out)


def test_a_cancelled_store_leaves_nothing(tmp_path, model3d, volume):
    import threading

    cancel = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done >= 2:
            cancel.set()

    with pytest.raises(na.Cancelled):
        na.predict(
            volume, model3d, tile=32, block=32, out=tmp_path / "r.zarr", progress=progress, cancel=cancel
        )
    assert calls and list(tmp_path.iterdir()) == []


def test_store_opens_with_the_ome_zarr_reader(tmp_path, model3d, volume):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = tmp_path / "result.zarr"
    spacing, origin = (2.0, 0.5, 0.75), (10.0, -20.0, 30.0)
    scan = na.io.Volume(volume, spacing, origin, np.eye(3))
    pred = na.predict(scan, model3d, tile=32, normalization="zscore", block=32, out=out)
    image = next(n for n in Reader(parse_url(str(out)))())
    assert image.data[0].shape == (2,) + volume.shape
    transforms = image.metadata["coordinateTransformations"][0]
    assert transforms[0]["scale"] == [1.0, *spacing]
    assert transforms[1]["translation"] == [0.0, *origin]
    labels = [n for n in Reader(parse_url(str(out)))() if "image-label" in n.zarr.root_attrs]
    assert len(labels) == 1 and np.array_equal(np.asarray(labels[0].data[0]), pred.labels())
    gate = next(Reader(parse_url(str(out / "gates" / "gate2")))())
    scale, shift = gate.metadata["coordinateTransformations"][0]
    stride, offset = pred.gates[1].stride, pred.gates[1].offset
    assert scale["scale"][1:] == pytest.approx([s * t for s, t in zip(spacing, stride, strict=True)])
    assert shift["translation"][1:] == pytest.approx(
        [o + s * f for o, s, f in zip(origin, spacing, offset, strict=True)]
    )


def test_blocks_on_a_local_cluster_load_the_model_once_per_worker(model3d, volume, tmp_path):
    distributed = pytest.importorskip("distributed")

    ref = na.predict(volume, model3d, tile=32, normalization="zscore")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pred = na.predict(
            volume,
            model3d,
            tile=32,
            normalization="zscore",
            block=32,
            scheduler=client,
            out=tmp_path / "r.zarr",
        )
        loaded = client.run(_models_here)
    assert len(plan(volume.shape, model3d, tile=32, block=32).blocks) >= 8
    assert sorted(loaded.values()) == [1, 1]  # each worker built the network once
    assert np.abs(pred.quantized[:].astype(int) - ref.quantized.astype(int)).max() <= 1
    for mine, theirs in zip(pred.gates, ref.gates, strict=True):
        assert np.abs(mine.data[:] - theirs.data).max() < 1e-4


def _models_here() -> int:
    from napari_attunet.inference import blockwise

    return len(blockwise._MODELS)


def test_one_block_is_read_once_and_equals_the_in_memory_run(tmp_path, model3d, volume):
    """A volume that is one block: one read, the in-memory statistics, the very same bytes."""
    array = zarr.create_array(
        tmp_path / "scan.zarr", shape=volume.shape, chunks=(16, 24, 24), dtype=volume.dtype
    )
    array[:] = volume
    counted = CountedArray(zarr.open_array(tmp_path / "scan.zarr", mode="r"))
    ref = na.predict(volume, model3d, tile=32, normalization="percentile", spacing=(2.0, 1.0, 1.0))
    out = tmp_path / "result.zarr"
    pred = na.predict(counted, model3d, tile=32, normalization="percentile", spacing=(2.0, 1.0, 1.0), out=out)
    assert counted.reads == 1  # no statistics pass before the block's own read
    assert "1 block(s)" in pred.notes[0] and "in this process" in pred.notes[0]
    assert np.array_equal(pred.quantized[:], ref.quantized)
    for mine, theirs in zip(pred.gates, ref.gates, strict=True):
        assert np.array_equal(mine.data[:], theirs.data)
    assert pred.runtime == ref.runtime


def test_block_sizes_run_the_fewest_windows_within_the_budget(model3d):
    """Of every block size (multiples of the window step) whose largest context fits the
    budget, the plan's runs the fewest windows; the blocks tile the volume once."""
    import itertools

    from napari_attunet.inference.blockwise import BLOCK_BUDGET, window_count

    shape = (320, 512, 640)

    def context(work) -> int:
        return max(np.prod([s.stop - s.start for s in b.outer]) for b in work.blocks)

    work = plan(shape, model3d, tile=128)
    runs, once = window_count(work)
    assert once == 4 * 7 * 9 and context(work) <= BLOCK_BUDGET
    fewest = min(
        window_count(other)[0]
        for sizes in itertools.product(*[range(64, n + 64, 64) for n in shape])
        if context(other := plan(shape, model3d, tile=128, block=sizes)) <= BLOCK_BUDGET
    )
    assert runs == fewest < window_count(plan(shape, model3d, tile=128, block=128))[0]
    covered = np.zeros([n // 64 for n in shape], int)
    for b in work.blocks:
        covered[tuple(slice(s.start // 64, s.stop // 64) for s in b.region)] += 1
    assert (covered == 1).all()


def test_store_has_a_pyramid_that_ome_zarr_reads(tmp_path, model3d, volume, monkeypatch):
    """Halved levels: probabilities and uncertainty by 2x2x2 means (centred between the voxels
    they mix), labels by every second voxel; level 0 is what a one-level store holds."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from napari_attunet.inference import store

    spacing, origin = (2.0, 0.5, 0.75), (10.0, -20.0, 30.0)
    scan = na.io.Volume(volume, spacing, origin, np.eye(3))
    options = dict(tile=32, normalization="zscore", block=64)
    na.predict(scan, model3d, out=tmp_path / "flat.zarr", **options)
    monkeypatch.setattr(store, "PYRAMID_SMALLEST", 16)
    na.predict(scan, model3d, out=tmp_path / "pyramid.zarr", **options)
    flat = zarr.open_group(tmp_path / "flat.zarr", mode="r")
    root = zarr.open_group(tmp_path / "pyramid.zarr", mode="r")
    assert len(flat.attrs["multiscales"][0]["datasets"]) == 1
    for key in ("0", "labels/attunet/0", "uncertainty/0"):
        assert np.array_equal(root[key][:], flat[key][:])

    nodes = list(Reader(parse_url(str(tmp_path / "pyramid.zarr")))())
    image = nodes[0]
    levels = len(image.data)
    assert levels == 3  # 88 -> 44 -> 22: a fourth would cut blocks of 64 into chunks of 8 (< 16)
    labels = next(n for n in nodes if "image-label" in n.zarr.root_attrs)
    assert len(labels.data) == levels
    lab0 = np.asarray(labels.data[0])
    for k in range(levels):
        f = 2**k
        scale, shift = image.metadata["coordinateTransformations"][k]
        assert scale["scale"] == [1.0, *(s * f for s in spacing)]
        assert shift["translation"] == pytest.approx(
            [0.0, *(o + s * (f - 1) / 2 for o, s in zip(origin, spacing, strict=True))]
        )
        scale, shift = labels.metadata["coordinateTransformations"][k]
        assert scale["scale"] == [s * f for s in spacing] and shift["translation"] == list(origin)
        assert np.array_equal(np.asarray(labels.data[k]), lab0[::f, ::f, ::f])
        assert image.data[k].shape[1:] == tuple(-(-n // f) for n in volume.shape)
    q = root["0"][:].astype(np.float64)
    mean = q.reshape(2, 12, 4, 18, 4, 22, 4).mean(axis=(2, 4, 6))
    assert np.abs(root["2"][:].astype(np.float64) - mean).max() <= 0.5
    assert np.asarray(image.data[levels - 1]).std() > 0  # the levels hold values, not the fill


def test_the_documented_slurm_cluster_runs_blocks(tmp_path, model3d, volume):
    """docs/out-of-core.md's SLURMCluster: its job script asks for what the page says, and the worker
    command in it (run here as the job would run it, without SLURM) predicts our blocks."""
    import re
    import shlex
    import subprocess
    from pathlib import Path

    jobqueue = pytest.importorskip("dask_jobqueue")
    readme = (Path(__file__).parent.parent / "docs" / "out-of-core.md").read_text()
    call = re.search(r"cluster = (SLURMCluster\(.*\))", readme).group(1)
    cluster = eval(call, {"SLURMCluster": jobqueue.SLURMCluster})  # the page's literal arguments
    worker = None
    try:
        script = cluster.job_script()
        assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH -t 02:00:00" in script
        command = next(line for line in script.splitlines() if "dask_worker" in line)
        assert cluster.scheduler_address in command and "--nthreads 1" in command
        assert command.split()[0] == sys.executable
        worker = subprocess.Popen(shlex.split(command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ref = na.predict(volume, model3d, tile=32, normalization="zscore")
        pred = na.predict(
            volume,
            model3d,
            tile=32,
            normalization="zscore",
            block=32,
            scheduler=cluster.scheduler_address,
            out=tmp_path / "r.zarr",
        )
        assert "on Dask" in pred.notes[0]
        assert np.abs(pred.quantized[:].astype(int) - ref.quantized.astype(int)).max() <= 1
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        cluster.close()


@pytest.mark.parametrize("mode", ["zscore", "zscore_nonzero", "zscore_foreground", "percentile"])
def test_statistics_of_wide_planes_come_in_bands(volume, mode, monkeypatch, model3d):
    """A chunk-deep slab larger than the read size is read in bands of the second axis: the
    statistics still equal the in-memory ones (same moments, same sampled voxels)."""
    from napari_attunet.inference import lazy
    from napari_attunet.inference.preprocess import _sample, fit, resolve_normalization

    monkeypatch.setattr(lazy, "SLAB_VOXELS", 16 * 24 * 88)  # one chunk deep, a third of the plane
    image = volume.copy()
    image[:, :10] = 0  # something for "nonzero" to leave out
    source = lazy.LazySource(da.from_array(image, chunks=(16, 24, 24)), model3d.spec, None, "v")
    assert len(list(source.pieces(None))) == 3 * 3
    norm = resolve_normalization(mode, model3d.spec)
    mine = lazy.fit_lazy(source, norm)[0]
    theirs = fit(image.astype(np.float32), norm)  # as the engine fits: on float32
    assert mine.gain == pytest.approx(theirs.gain, rel=1e-5)
    assert mine.shift == pytest.approx(theirs.shift, rel=1e-5, abs=1e-6)
    monkeypatch.setattr(lazy, "SAMPLE_LIMIT", 5000)  # a strided sample, not every voxel
    sample = lazy._sample(source, None, image.size)
    assert np.array_equal(np.sort(sample), np.sort(_sample(image.astype(np.float32), 5000)))


def test_gate_chunks_shared_by_blocks_are_written_by_the_caller(tmp_path, model3d):
    """On a flipped axis of odd length the gate cells of a block do not start on a chunk edge:
    two workers would each rewrite a shared chunk and one part would be lost. Those gate maps
    are written by the caller, block after block; the store equals the in-memory run."""
    from napari_attunet.inference.store import chunks_owned

    affine = np.diag([-2.0, 1.0, -1.0, 1.0])
    image = np.random.default_rng(4).normal(size=(37, 41, 53)).astype(np.float32)
    options = dict(tile=32, affine=affine, orientation="RAS", normalization="zscore")
    work = plan(image.shape, model3d, tile=32, block=16, layout=_layout(model3d, affine))
    straight = plan(image.shape, model3d, tile=32, block=16)
    chunks = [tuple(max(1, round(16 / s)) for s in g.stride) for g in work.gates]
    assert not all(chunks_owned(work, g, c) for g, c in zip(work.gates, chunks, strict=True))
    assert all(chunks_owned(straight, g, c) for g, c in zip(straight.gates, chunks, strict=True))
    ref = na.predict(image, model3d, **options)
    out = tmp_path / "r.zarr"
    na.predict(da.from_array(image, chunks=16), model3d, block=16, workers=2, out=out, **options)
    for k, theirs in enumerate(ref.gates, start=1):
        mine = zarr.open_array(str(out / "gates" / f"gate{k}" / "0"), mode="r")[:]
        assert np.abs(mine - theirs.data).max() < 1e-4


def _layout(model, affine):
    from napari_attunet.inference.orientation import network_layout

    return network_layout(model.spec, 3, affine, None, "RAS")


@pytest.mark.parametrize("normalization", ["zscore", "percentile"])
def test_blocks_agree_on_resampled_and_reoriented_scans(tmp_path, normalization):
    """A scan at another spacing than the network's: each block is resampled on the whole
    run's grid (its windows are the whole run's) and normalized with the statistics of the
    resampled volume, so blocks, and the store, equal one in-memory run."""
    model = sharpen_gates(
        make_model(official_spec(3, features=(4, 8, 16, 32, 64), spacing=(2.0, 1.0, 1.0)), seed=3)
    )
    rng = np.random.default_rng(7)
    image = (ndimage.gaussian_filter(rng.normal(size=(29, 46, 51)), 2.0) * 4000 + 300).astype(np.int16)
    affine = np.diag([-1.3, 0.7, -1.1, 1.0])
    options = dict(
        tile=32,
        normalization=normalization,
        spacing=(1.3, 0.7, 1.1),
        affine=affine,
        orientation="RAS",
        precision="fp32",
    )
    ref = na.predict(image, model, **options)
    out = tmp_path / "r.zarr"
    lazy = na.predict(da.from_array(image, chunks=16), model, block=16, out=out, **options)
    assert "block(s)" in lazy.notes[0] and not lazy.notes[0].startswith("predicted in 1 ")
    assert np.abs(np.asarray(lazy.quantized).astype(int) - ref.quantized.astype(int)).max() <= 1
    assert np.array_equal(zarr.open_array(str(out / "labels" / "attunet" / "0"))[:], ref.labels())
    assert max(g.data.std() for g in ref.gates) > 0.01  # maps that vary: the comparison means something
    for k, theirs in enumerate(ref.gates, start=1):
        mine = zarr.open_array(str(out / "gates" / f"gate{k}" / "0"), mode="r")[:]
        assert mine.shape == theirs.data.shape
        assert np.abs(mine - theirs.data).max() < 1e-4


def test_statistics_of_a_resampled_permuted_scan_are_the_in_memory_ones():
    """The resampled voxels are made in the network's axis order, as in memory: the same float32
    values, the same exact zeros (zscore_nonzero counts them), so the same IntensityMap."""
    import torch

    from napari_attunet.inference import lazy, preprocess
    from napari_attunet.inference.orientation import network_layout
    from napari_attunet.inference.plan import _to_network
    from napari_attunet.inference.windows import run_windows

    model = make_model(monai_spec(3, features=(4, 8, 16), spacing=(2.0, 1.0, 1.0)), seed=3)
    rng = np.random.default_rng(724)
    image = (ndimage.gaussian_filter(rng.normal(size=(37, 37, 32)), 1.5) * 4000 + 300).astype(np.int16)
    image[..., :8] = 0
    spacing, affine = (4.0, 1.3, 2.6), np.diag([4.0, 1.3, -2.6, 1.0])
    layout = network_layout(model.spec, 3, affine, None, "LPS")
    assert layout.permutation != (0, 1, 2) and layout.flipped  # permuted and flipped
    norm = preprocess.resolve_normalization("zscore_nonzero", model.spec)
    factors = preprocess.resample_factors(spacing, model.spec, 3)
    laid = _to_network(torch.from_numpy(image.astype(np.float32))[None], layout)
    seen = preprocess.resample(laid, tuple(factors[p] for p in layout.permutation))[0].numpy()
    expected = preprocess.fit(seen, norm)
    run = run_windows(image.shape, model.spec, tile=16, spacing=spacing, layout=layout)
    assert lazy.fit_as_seen([image], run.axes, run.perm, norm, "scan") == [expected]
    source = lazy.LazySource(da.from_array(image, chunks=16), model.spec, None, "scan")
    assert lazy.fit_lazy(lazy.as_seen(source, run.axes, run.perm), norm) == [expected]


@pytest.fixture(scope="module")
def two_channel():
    return sharpen_gates(make_model(official_spec(3, in_ch=2, features=(4, 8, 16, 32, 64)), seed=5))


def test_channels_given_as_a_list_run_block_by_block_into_a_store(tmp_path, two_channel, volume):
    """One image per channel (arrays, zarr arrays, scans read from files) runs block by block
    into a store as the same list runs in memory (it once failed: a list has no shape)."""
    import SimpleITK as sitk
    from helpers import sitk_image

    from napari_attunet.scans import io

    first = volume[:32, :48, :56]
    second = (np.flip(first, 1) * 0.5 + 100).astype(np.int16)
    options = dict(tile=32, normalization="zscore", spacing=(2.0, 1.0, 1.0))
    ref = na.predict([first, second], two_channel, **options)
    stacked = na.predict(np.stack([first, second]), two_channel, channel_axis=0, **options)
    assert np.array_equal(ref.quantized, stacked.quantized)
    assert len(np.unique(ref.labels())) == 2  # both classes: the labels compare something
    stores = []
    for k, channel in enumerate((first, second)):
        store = zarr.create_array(
            tmp_path / f"ch{k}.zarr", shape=channel.shape, chunks=(16, 16, 16), dtype=channel.dtype
        )
        store[:] = channel
        stores.append(zarr.open_array(tmp_path / f"ch{k}.zarr", mode="r"))
    assert len(plan(first.shape, two_channel, tile=32, block=32, spacing=(2.0, 1.0, 1.0)).blocks) >= 4
    for name, image in (("arrays", [first, second]), ("zarr", stores)):
        out = tmp_path / f"{name}.zarr"
        pred = na.predict(image, two_channel, out=out, block=32, **options)
        assert np.array_equal(zarr.open_group(out, mode="r")["labels/attunet/0"][:], ref.labels()), name
        assert np.abs(pred.quantized[:].astype(int) - ref.quantized.astype(int)).max() <= 1
    # scans read from files: the first one's geometry, in memory and into a store alike
    paths = []
    for k, channel in enumerate((first, second)):
        paths.append(tmp_path / f"ch{k}.nii.gz")
        sitk.WriteImage(sitk_image(channel), str(paths[-1]))
    scans = [io.read(p) for p in paths]
    in_memory = na.predict(scans, two_channel, tile=32, normalization="zscore")
    pred = na.predict(
        scans, two_channel, tile=32, normalization="zscore", out=tmp_path / "scans.zarr", block=32
    )
    assert np.array_equal(
        zarr.open_group(tmp_path / "scans.zarr", mode="r")["labels/attunet/0"][:], in_memory.labels()
    )
    assert pred.spacing == in_memory.spacing == tuple(scans[0].spacing)
    # what cannot run is one sentence: file names, scans on different grids, shapes that differ
    shifted = io.Volume(scans[1].array, scans[1].spacing, (0.0, 0.0, 9.0), scans[1].direction)
    for bad, words in (
        ([str(p) for p in paths], "file name"),
        ([scans[0], shifted], "one grid"),
        ([first, second[:, :40]], "differ in shape"),
    ):
        for out in (None, tmp_path / "bad.zarr"):
            with pytest.raises(na.InputError, match=words) as info:
                na.predict(bad, two_channel, out=out, tile=32)
            assert "\n" not in str(info.value)
    assert not (tmp_path / "bad.zarr").exists()

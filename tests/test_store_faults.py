"""OME-Zarr stores under faults: an existing store is replaced only once the new one is whole, a
full disk, a parent that is a file or a read-only folder are one sentence naming the store and
leave nothing; damaged, grouped and huge zarr inputs are named before anything large is read;
Ctrl-C or a cancel removes the partial store within about one block, on threads and on a
LocalCluster. Real files, real tmpfs mounts, real SIGINT to real processes."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import _check_message, _fill, _tmpfs, make_model, official_spec, snapshot

import napari_attunet as na
from napari_attunet.cli import main
from napari_attunet.errors import Cancelled, InputError
from napari_attunet.scans.outputs import OutputError

zarr = pytest.importorskip("zarr")
pytestmark = pytest.mark.usefixtures("torch_single_thread")
FP32 = dict(precision="fp32", device="cpu", runtime="torch")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model():
    return make_model(official_spec(3, out_ch=3, features=(2, 4, 8, 16, 32)), seed=4)


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return na.save_model(model, folder / "m.safetensors", class_names=["background", "organ", "lesion"])


def _scan(path: pathlib.Path, seed: int, shape=(16, 24, 24)) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray((rng.random(shape) * 200).astype(np.int16)), str(path))
    return path


def _volume(shape=(24, 32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _cli(*argv) -> tuple[int, list[str]]:
    import io as _io

    err = _io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(_io.StringIO()):
        code = main(["predict", *map(str, argv), "-q"])
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- A: the store's own output -----------------------------------------------------------------


def test_overwrite_keeps_the_old_store_until_the_new_one_is_whole(ckpt, tmp_path):
    good = _scan(tmp_path / "scan.nii.gz", 1)
    out = tmp_path / "res.zarr"
    assert _cli(good, "-c", ckpt, "-o", out) == (0, [])
    before = snapshot(out)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan at all" * 64)
    code, lines = _cli(broken, "-c", ckpt, "-o", out, "--overwrite")
    assert code == 1 and len(lines) == 1, lines
    _check_message(lines[0], "broken.nii.gz")
    assert snapshot(out) == before  # the old result is still there, byte for byte
    assert _leftovers(tmp_path) == []

    other = _scan(tmp_path / "other.nii.gz", 2)
    assert _cli(other, "-c", ckpt, "-o", out, "--overwrite") == (0, [])
    expected = na.predict(na.io.read(other), na.load_model(ckpt))
    assert np.array_equal(zarr.open_group(out, mode="r")["labels/attunet/0"][:], expected.labels())
    assert snapshot(out) != before and _leftovers(tmp_path) == []


def test_api_overwrite_replaces_a_file_too(model, tmp_path):
    out = tmp_path / "r.zarr"
    out.write_text("a file where the store goes")
    with pytest.raises(OutputError, match="already exists"):
        na.predict(_volume(), model, out=out, **FP32)
    assert out.read_text() == "a file where the store goes"
    pred = na.predict(_volume(), model, out=out, overwrite=True, **FP32)
    assert out.is_dir() and np.array_equal(
        np.asarray(pred.labels()), na.predict(_volume(), model, **FP32).labels()
    )
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["api", "cli"])
@pytest.mark.parametrize("free_kib", [32, 160])  # full while the store is laid out; while blocks go in
def test_full_disk_while_a_store_is_written(model, ckpt, tmp_path, how, free_kib):
    scan = _scan(tmp_path / "big.nii.gz", 3, shape=(32, 48, 48))
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "notes.txt").write_text("the user's notes")
        _fill(disk, free_kib << 10)
        before = snapshot(disk)
        out = disk / "r.zarr"
        if how == "api":
            with pytest.raises(OutputError) as err:
                na.predict(na.io.read(scan), model, out=out, block=16, tile=16, **FP32)
            message = str(err.value)
        else:
            code, lines = _cli(scan, "-c", ckpt, "-o", out, "--runtime", "torch")
            assert code == 1 and len(lines) == 1, lines
            message = lines[0]
        _check_message(message, str(out))
        assert "the disk is full" in message and ".partial" not in message
        assert snapshot(disk) == before and _leftovers(disk) == []


@pytest.mark.parametrize("how", ["api", "cli"])
def test_a_parent_that_is_a_file(model, ckpt, tmp_path, how):
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "notes.txt" / "r.zarr"
    if how == "api":
        with pytest.raises(OutputError) as err:
            na.predict(_volume(), model, out=out, **FP32)
        message = str(err.value)
    else:
        code, lines = _cli(_scan(tmp_path / "s.nii.gz", 0), "-c", ckpt, "-o", out)
        assert code == 1 and len(lines) == 1, lines
        message = lines[0]
    _check_message(message, "notes.txt")
    assert "is a file" in message and "File exists" not in message
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_read_only_parent_from_the_api(model, tmp_path):
    with _tmpfs(tmp_path / "ro", "64k", "ro") as ro:
        out = ro / "r.zarr"
        with pytest.raises(OutputError) as err:
            na.predict(_volume(), model, out=out, **FP32)
        _check_message(str(err.value), str(out))
        assert "read-only" in str(err.value) and ".partial" not in str(err.value)
        assert snapshot(ro) == {}


# ---- B: zarr inputs ----------------------------------------------------------------------------


def test_a_damaged_chunk_names_the_store_and_the_chunk(model, tmp_path):
    from numcodecs import Zstd

    path = tmp_path / "in.zarr"
    array = zarr.create_array(
        str(path), shape=(24, 32, 32), chunks=(8, 16, 16), dtype="float32", zarr_format=2, compressors=Zstd()
    )
    array[:] = _volume()
    chunk = path / "1.0.1"
    chunk.write_bytes(chunk.read_bytes()[:7] + b"garbage" * 9)
    with pytest.raises(InputError) as err:
        na.predict(zarr.open_array(str(path), mode="r"), model, **FP32)
    message = str(err.value)
    _check_message(message, str(path))
    assert "1.0.1" in message and "damaged" in message


def _ome_group(path: pathlib.Path, image: np.ndarray, scale) -> object:
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=image.shape, chunks=(8, 16, 16), dtype=image.dtype)[:] = image
    root.create_array("1", shape=tuple(n // 2 for n in image.shape), dtype=image.dtype)
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n, "type": "space", "unit": "millimeter"} for n in "zyx"],
            "datasets": [
                {
                    "path": str(k),
                    "coordinateTransformations": [{"type": "scale", "scale": [s * 2**k for s in scale]}],
                }
                for k in range(2)
            ],
        }
    ]
    return zarr.open_group(str(path), mode="r")


def test_an_ome_zarr_group_opens_its_first_level(model, tmp_path):
    image = _volume()
    group = _ome_group(tmp_path / "img.zarr", image, (2.0, 0.8, 0.8))
    pred = na.predict(group, model, **FP32)
    expected = na.predict(image, model, spacing=(2.0, 0.8, 0.8), **FP32)
    assert np.array_equal(np.asarray(pred.labels()), expected.labels())
    assert pred.spacing == pytest.approx((2.0, 0.8, 0.8))

    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    plain.create_array("raw", shape=(8, 8, 8), dtype="float32")
    with pytest.raises(InputError) as err:
        na.predict(zarr.open_group(str(tmp_path / "plain.zarr"), mode="r"), model, **FP32)
    _check_message(str(err.value), "plain.zarr")
    assert "multiscales" in str(err.value) and "raw" in str(err.value)


def test_a_huge_level_without_out_is_refused_before_reading(model, tmp_path):
    huge = zarr.create_array(
        str(tmp_path / "huge.zarr"), shape=(4096, 4096, 4096), chunks=(128, 128, 128), dtype="float32"
    )
    started = time.perf_counter()
    with pytest.raises(InputError) as err:
        na.predict(huge, model, **FP32)
    assert time.perf_counter() - started < 60  # a plan and an estimate, no pass over the voxels
    _check_message(str(err.value), "out=")
    assert "GiB" in str(err.value) or "TiB" in str(err.value)
    assert list((tmp_path / "huge.zarr").iterdir()) == [tmp_path / "huge.zarr" / "zarr.json"]  # no chunk


# ---- C: interrupts and cancels -----------------------------------------------------------------


def _partial(folder: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in folder.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("scheduler", [[], ["--scheduler", "local:2"]], ids=["threads", "cluster"])
def test_ctrl_c_while_a_store_is_written(ckpt, tmp_path, scheduler):
    """SIGINT to the command as soon as the hidden store appears: rc 130, one line saying nothing
    was written, no traceback, nothing left."""
    scan = _scan(tmp_path / "scan.nii.gz", 5, shape=(32, 64, 64))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's file")
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_attunet.cli", "predict", str(scan), "-c", str(ckpt)]
        + ["-o", str(out / "r.zarr"), "-q", "--runtime", "torch", *scheduler],
        env=ENV,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not _partial(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _partial(out), "the store never appeared"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, err
    _check_message(lines[0], "r.zarr")
    assert "interrupted" in lines[0] and "nothing was written" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


SCRIPT = """
import sys, time, numpy as np, napari_attunet as na
model = na.load_model(sys.argv[1])
volume = np.random.default_rng(0).normal(size=(64, 64, 128)).astype(np.float32)
marks = []
def progress(done, total):
    marks.append(time.perf_counter())
    if done == 2:  # the second block: one without first-time costs
        print("block", marks[-1] - marks[-2], flush=True)
try:
    na.predict(volume, model, out=sys.argv[2], block=32, tile=32, progress=progress, precision="fp32",
               device="cpu", runtime="torch")
except KeyboardInterrupt:
    print("stopped", time.perf_counter(), flush=True)
    sys.exit(130)
"""


def test_ctrl_c_during_a_multi_block_run_stops_within_about_one_block(ckpt, tmp_path):
    out = tmp_path / "r.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(ckpt), str(out)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()  # "block <seconds>": two blocks of 16 are in
    assert first.startswith("block"), proc.stderr.read()
    block = float(first.split()[1])
    proc.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    code = proc.wait(timeout=300)
    waited = time.perf_counter() - sent
    assert code == 130, proc.stderr.read()
    # waiting for the other 13 or 14 blocks would take many block times (Python's exit: ~1 s)
    assert waited < 2 * block + 3.0, (waited, block)
    assert not out.exists() and _partial(tmp_path) == []


@contextlib.contextmanager
def _on_threads():
    yield None


@contextlib.contextmanager
def _on_a_local_cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize(
    "where, shape, stop_at, blocks, slack",
    [
        # threads: a pool with a stop flag; the second block is one without first-time costs
        (_on_threads, (64, 64, 128), 2, 2, 1.0),
        # a LocalCluster: a distributed Event; its first block includes the workers' start
        (_on_a_local_cluster, (64, 64, 96), 1, 3, 5.0),
    ],
    ids=["threads", "local-cluster"],
)
def test_cancel_during_a_multi_block_run(model, tmp_path, where, shape, stop_at, blocks, slack):
    """Cancel after the first blocks: the run stops within about a block (the blocks left would
    take many), the store is removed, and no block still running writes into it afterwards."""
    out = tmp_path / "r.zarr"
    cancel = threading.Event()
    marks: list[float] = []

    def progress(done, total):
        marks.append(time.perf_counter())
        if done == stop_at:
            cancel.set()

    with where() as client:
        with pytest.raises(Cancelled):
            na.predict(
                _volume(shape),
                model,
                out=out,
                block=32,
                tile=32,
                cancel=cancel,
                progress=progress,
                scheduler=client,
                **FP32,
            )
        stopped = time.perf_counter()
        assert len(marks) > stop_at
        block = marks[stop_at] - marks[stop_at - 1]
        assert stopped - marks[-1] < blocks * block + slack, (stopped - marks[-1], block)
        assert not out.exists() and _partial(tmp_path) == []
        time.sleep(2)  # no block still running writes into the removed store afterwards
        assert _partial(tmp_path) == [] and not out.exists()

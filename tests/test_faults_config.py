"""Faults of configuration and of the new surfaces (issue 21): the OpenVINO cache (entries
without hashes, paths out of the cache, FIFOs and links), cached copies of a network whose
BatchNorm statistics change in place, ``$NAPARI_ATTUNET_CACHE_MB``, thresholds, orientation
on 2D models, ``--scheduler`` addresses, memory under a process's own limits (a real
RLIMIT_AS in a subprocess), checkpoint zip records smaller than their tensors, and an empty
list of channels.

As in test_bad_inputs.py, every refusal asserts the error's type, a one-line message naming
the file, option or setting, and folders unchanged byte for byte; every accepted case asserts
the result a sound run gives.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
from helpers import TOL_Q, X, _check_message, lee_spec, make_model, official_spec, random_image, snapshot

import napari_attunet as na
from napari_attunet.cli import main
from napari_attunet.inference import iter_predict
from napari_attunet.inference.cluster import cores, parse
from napari_attunet.inference.postprocess import check_thresholds
from napari_attunet.plugin.run_inputs import threshold_values

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    from napari_attunet.inference.runtime_openvino import CACHE_ENV

    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


# ---- the OpenVINO cache ----------------------------------------------------------------------


def _ov_run(model, image) -> tuple[bool, object]:
    """(whether the run converted, its prediction) with the OpenVINO runtime."""
    from napari_attunet.inference.runtime_openvino import COMPILING

    steps = iter_predict(image, model, normalization="none", precision="fp32", runtime="openvino", tile=16)
    messages = []
    while True:
        try:
            messages.append(next(steps).message)
        except StopIteration as stop:
            return COMPILING in messages, stop.value


def _entry_of(model) -> pathlib.Path:
    from napari_attunet.inference.runtime_openvino import cached_model

    return cached_model(model)[1]


@pytest.fixture(scope="module")
def converted_pair(tmp_path_factory):
    """Two networks of one shape, each converted once into a cache of this module: (root,
    cache, checkpoint of A, image, PyTorch's prediction of A)."""
    pytest.importorskip("openvino")
    from napari_attunet.inference.runtime_openvino import CACHE_ENV

    root = tmp_path_factory.mktemp("pair")
    image = random_image((32, 32), seed=21)
    paths, refs = [], []
    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(root / "cache")
    try:
        for seed in (31, 32):
            path = na.save_model(make_model(lee_spec(2), seed=seed), root / f"net{seed}.safetensors")
            converted, _ = _ov_run(na.load_model(path), image)
            assert converted
            paths.append(path)
            options = dict(normalization="none", precision="fp32", runtime="torch", tile=16)
            refs.append(na.predict(image, na.load_model(path), **options))
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV)
        else:
            os.environ[CACHE_ENV] = saved
    assert (refs[0].quantized != refs[1].quantized).mean() > 0.5  # the networks tell apart
    return root, root / "cache", paths[0], image, refs[0]


@pytest.fixture
def two_entries(converted_pair, cache):
    """The pair's cache copied for one test: (checkpoint of A, entry of A, entry of B, image,
    PyTorch's prediction of A)."""
    root, stored, path, image, ref = converted_pair
    shutil.copytree(stored, cache)
    entries = [_entry_of(na.load_model(p)) for p in (path, root / "net32.safetensors")]
    assert all(e.is_dir() for e in entries)
    return path, entries[0], entries[1], image, ref


@pytest.mark.parametrize("sums", [{}, [], "one"], ids=["empty", "list", "one-of-two"])
def test_cache_entry_without_hashes_is_not_trusted(two_entries, sums):
    """Another network's files in A's entry, with a manifest that lists no (or not every)
    hash: A's own network is converted again, and its labels are PyTorch's."""
    path, entry_a, entry_b, image, ref = two_entries
    for name in ("model.xml", "model.bin"):
        shutil.copyfile(entry_b / name, entry_a / name)
    manifest = json.loads((entry_a / "manifest.json").read_text())
    if sums == "missing":
        del manifest["sha256"]
    elif sums == "one":  # a true hash of the foreign xml, none for the weights
        manifest["sha256"] = {
            "model.xml": json.loads((entry_b / "manifest.json").read_text())["sha256"]["model.xml"]
        }
    else:
        manifest["sha256"] = sums
    (entry_a / "manifest.json").write_text(json.dumps(manifest))
    converted, pred = _ov_run(na.load_model(path), image)
    assert converted
    assert np.abs(pred.probabilities - ref.probabilities).max() <= TOL_Q
    assert np.array_equal(pred.labels(), ref.labels())
    rebuilt = json.loads((entry_a / "manifest.json").read_text())["sha256"]
    assert set(rebuilt) == {"model.xml", "model.bin"}


class _FifoWatch:
    """A FIFO that reports whether anyone opened it to read, and lets such a reader go (an
    open for writing succeeds only while a reader holds it; closing it gives the reader EOF)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path, self.readers, self._stop = path, 0, threading.Event()
        os.mkfifo(path)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue  # ENXIO: nobody reads
            self.readers += 1
            os.close(fd)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.readers


def _stored(path: pathlib.Path):
    """What the cache holds for the checkpoint at ``path`` (None: not trusted), converting nothing."""
    from napari_attunet.inference.runtime_openvino import cached_model

    return cached_model(na.load_model(path))[0]


def test_cache_never_reads_outside_its_folder(two_entries, tmp_path):
    """A manifest naming ``../../../outside_fifo``, files that are links out of the entry, a
    FIFO in the entry, an entry folder that is a link: each is not trusted, nothing outside is
    opened, nothing blocks; a run converts again and replaces the link with a sound entry."""
    path, entry_a, entry_b, image, ref = two_entries
    sound = tmp_path / "sound"
    shutil.copytree(entry_a, sound)
    outside = tmp_path / "outside"
    fifo = _FifoWatch(tmp_path / "outside_fifo")

    def fresh_entry():
        if entry_a.is_symlink():
            entry_a.unlink()
        shutil.rmtree(entry_a, ignore_errors=True)
        shutil.copytree(sound, entry_a)
        assert _stored(path) is not None  # a sound entry is used

    try:
        # a manifest naming a file out of the cache, with a hash listed for it
        fresh_entry()
        manifest = json.loads((entry_a / "manifest.json").read_text())
        manifest["sha256"]["../../../outside_fifo"] = "0" * 64
        (entry_a / "manifest.json").write_text(json.dumps(manifest))
        assert os.path.exists(entry_a / "../../../outside_fifo")  # it does lead there
        assert _stored(path) is None

        # the weights a link to a true copy outside (its hash matches)
        fresh_entry()
        outside.mkdir()
        shutil.copyfile(entry_a / "model.bin", outside / "model.bin")
        (entry_a / "model.bin").unlink()
        (entry_a / "model.bin").symlink_to(outside / "model.bin")
        assert _stored(path) is None

        # a FIFO in place of the xml; the manifest a link to the FIFO outside
        for name, make in (
            ("model.xml", lambda p: os.mkfifo(p)),
            ("manifest.json", lambda p: p.symlink_to(fifo.path)),
        ):
            fresh_entry()
            (entry_a / name).unlink()
            make(entry_a / name)
            started = time.monotonic()
            assert _stored(path) is None and time.monotonic() - started < 30

        # the entry folder itself a link to a sound copy outside: not used, not changed
        shutil.rmtree(entry_a)
        shutil.rmtree(outside)
        shutil.copytree(sound, outside)
        entry_a.symlink_to(outside, target_is_directory=True)
        before = snapshot(outside)
        assert _stored(path) is None
        converted, pred = _ov_run(na.load_model(path), image)
        assert converted and entry_a.is_dir() and not entry_a.is_symlink()
        assert snapshot(outside) == before
        assert np.abs(pred.probabilities - ref.probabilities).max() <= TOL_Q
        assert _stored(path) is not None
    finally:
        readers = fifo.stop()
    assert readers == 0, "a file outside the cache was opened"
    assert entry_b.is_dir()


# ---- BatchNorm statistics changed in place ----------------------------------------------------


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_batchnorm_statistics_changed_in_place_are_used(runtime, cache):
    """Running statistics changed in place (and one buffer replaced) after a run: the next run
    equals a fresh copy of the changed network, for the prepared (BN folded) PyTorch copy and
    the compiled OpenVINO one."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
    model = make_model(official_spec(2, features=(2, 4, 8, 16, 32)), seed=5)
    image = random_image((48, 48), seed=6)
    options = dict(normalization="none", precision="fp32", runtime=runtime, tile=16)
    first = na.predict(image, model, **options)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    with torch.no_grad():
        for k, bn in enumerate(norms):
            bn.running_mean.add_(0.5 * (k % 3 - 1))
            bn.running_var.mul_(2.5)
    norms[0].running_mean = norms[0].running_mean.clone() - 0.3  # a buffer replaced, not changed
    again = na.predict(image, model, **options)
    fresh = na.predict(image, copy.deepcopy(model), **options)
    assert (first.quantized != fresh.quantized).mean() > 0.5  # the change matters
    assert np.array_equal(again.quantized, fresh.quantized)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(again.gates, fresh.gates, strict=True))


# ---- settings and options ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "abc"])
@pytest.mark.parametrize("runtime", ["openvino", "auto"])
def test_cache_size_setting_that_is_no_size_is_named(value, runtime, cache, monkeypatch):
    pytest.importorskip("openvino")
    from napari_attunet.inference.runtime_openvino import LIMIT_ENV

    monkeypatch.setenv(LIMIT_ENV, value)
    model = make_model(lee_spec(2), seed=40)
    with pytest.raises(na.InputError) as info:
        na.predict(random_image((32, 32), seed=2), model, runtime=runtime, tile=16)
    _check_message(str(info.value), f"{LIMIT_ENV}={value!r}")
    assert "OpenVINO cannot run" not in str(info.value)
    assert not cache.exists() or not list(cache.rglob("*.bin"))


def test_cache_size_setting_on_the_command_line(files, tmp_path, cache, monkeypatch, capsys):
    pytest.importorskip("openvino")
    monkeypatch.setenv("NAPARI_ATTUNET_CACHE_MB", "inf")
    out = tmp_path / "out"
    code = main(["predict", str(files["scan"]), "-c", str(files["good"]), "-o", str(out), "-q"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, lines
    _check_message(lines[0], "NAPARI_ATTUNET_CACHE_MB")
    assert not out.exists() or not list(out.iterdir())


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> dict[str, pathlib.Path]:
    """A 2D checkpoint and a 2D scan."""
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("flat")
    ckpt = na.save_model(
        make_model(official_spec(2, features=(2, 4, 8, 16, 32)), seed=7), root / "net2d.safetensors"
    )
    scan = root / "slice.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray((random_image((32, 48), seed=3) * 100).astype(np.int16)), str(scan)
    )
    return {"ckpt": ckpt, "scan": scan, "root": root}


def _cli_refuses(argv: list[str], names: str, folders: list[pathlib.Path], capsys) -> None:
    before = [snapshot(f) if f.exists() else None for f in folders]
    code = main(argv)
    stdout, stderr = capsys.readouterr()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"napari-attunet {argv[0]}: ")
    _check_message(lines[0], names)
    assert "Traceback" not in stdout
    assert [snapshot(f) if f.exists() else None for f in folders] == before


@pytest.mark.parametrize(
    "values",
    [["1.5", "-0.2"], ["nan"], ["0.5", "inf"], ["-0.01"]],
    ids=["above-below", "nan", "inf", "negative"],
)
@pytest.mark.parametrize("output", ["folder", "store"])
def test_cli_thresholds_outside_zero_one_are_refused(values, output, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan_labels.nii.gz").write_bytes(b"the user's own labels")
    target = out / "r.zarr" if output == "store" else out
    argv = ["predict", str(files["scan"]), "-c", str(files["good"]), "-o", str(target), "-q"]
    _cli_refuses([*argv, "--thresholds", *values], "--thresholds", [out, files["root"]], capsys)


def test_api_thresholds_outside_zero_one_are_refused(files, tmp_path):
    model = na.load_model(files["good"])
    before = snapshot(tmp_path)
    for bad in ([1.5, -0.2], [0.5, float("nan")], float("nan"), 2.0):
        with pytest.raises(na.InputError) as info:
            na.predict(X, model, out=tmp_path / "r.zarr", thresholds=bad)
        _check_message(str(info.value), "thresholds")
    assert snapshot(tmp_path) == before and not (tmp_path / "r.zarr").exists()
    pred = na.predict(X, model)
    for bad in ([0.0, 1.5], [float("nan"), 0.5], -0.2):
        with pytest.raises(na.InputError) as info:
            pred.labels(bad)
        _check_message(str(info.value), "thresholds")
    check_thresholds([0.0, 1.0])  # the bounds are probabilities
    assert np.array_equal(pred.labels([0.0, 1.0]), pred.labels([0.0, 1.0 - 1e-9]))


def test_widget_thresholds_are_checked():
    with pytest.raises(na.InputError) as info:
        threshold_values("sigmoid", False, [0.5, 1.5])
    _check_message(str(info.value), "threshold sliders")
    assert threshold_values("softmax", False, [0.25]) == [0.0, 0.25]


def test_orientation_on_a_2d_model_is_refused(flat, tmp_path, capsys):
    model = na.load_model(flat["ckpt"])
    image = random_image((32, 48), seed=4)
    with pytest.raises(na.InputError) as info:
        na.predict(image, model, orientation="RAS")
    _check_message(str(info.value), "'RAS'")
    assert "2D" in str(info.value)
    # 'display' is what a 2D network always sees: accepted, and the same result as none
    shown = na.predict(image, model, orientation="display")
    assert np.array_equal(shown.quantized, na.predict(image, model).quantized)
    out = tmp_path / "out"
    argv = ["predict", str(flat["scan"]), "-c", str(flat["ckpt"]), "-o", str(out), "-q"]
    _cli_refuses([*argv, "--orientation", "RAS"], "--orientation RAS", [tmp_path, flat["root"]], capsys)
    assert main([*argv, "--orientation", "display"]) == 0


def test_convert_orientation_on_a_2d_model_is_refused(flat, tmp_path, capsys):
    """``convert --orientation RAS`` on a 2D checkpoint is refused as predict refuses it: the
    code would be stored and never applied."""
    out = tmp_path / "converted.safetensors"
    argv = ["convert", str(flat["ckpt"]), str(out)]
    for code in ("RAS", "native"):  # RAS once failed on the spec's own check, native was stored
        folders = [tmp_path, flat["root"]]
        _cli_refuses([*argv, "--orientation", code], f"--orientation {code}", folders, capsys)
    assert not out.exists()
    assert main([*argv, "--orientation", "display"]) == 0
    assert na.load_model(out).spec.network_orientation == "display"


def test_scheduler_addresses():
    assert parse("localhost:2") == ("remote", None)
    assert parse("localhost:8786") == ("remote", None)
    assert parse("10.1.2.3:8786") == ("remote", None)
    assert parse("tcp://localhost:8786") == ("remote", None)
    assert parse("local:1") == ("local", 1)
    assert parse("local") == ("local", cores())
    for bad in (f"local:{cores() + 1}", "local:0", "local:x", "localhost", "host:99999"):
        with pytest.raises(na.InputError) as info:
            parse(bad)
        _check_message(str(info.value), f"--scheduler {bad!r}")
    with pytest.raises(na.InputError) as info:
        parse("local:4096")
    assert f"1 to {cores()}" in str(info.value)


def test_cli_scheduler_beyond_the_cores_is_one_line(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["predict", str(files["scan"]), "-c", str(files["good"]), "-o", str(out), "-q"]
    started = time.monotonic()
    _cli_refuses(
        [*argv, "--scheduler", f"local:{cores() + 7}"], "--scheduler", [tmp_path, files["root"]], capsys
    )
    assert time.monotonic() - started < 30 and not out.exists()  # no cluster was started


def test_empty_channel_list_is_one_sentence(files):
    model = na.load_model(files["good"])
    for empty in ([], ()):
        with pytest.raises(na.InputError) as info:
            na.predict(empty, model, name="layer 'ct'")
        _check_message(str(info.value), "layer 'ct'")
        assert "channel" in str(info.value) and "()" not in str(info.value)


# ---- checkpoints whose zip records are smaller than their tensors ------------------------------


def _rewrite_zip(src: pathlib.Path, dst: pathlib.Path, change) -> pathlib.Path:
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            b.writestr(info, change(info.filename, a.read(info.filename)))
    return dst


@pytest.fixture(scope="module")
def short_records(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("records")
    model = make_model(official_spec(3, features=(2, 4, 8, 16, 32)), seed=3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["pad"] = torch.zeros(70000)  # a storage whose element count the pickle writes in 4 bytes
    base = root / "base.pt"
    torch.save(sd, base)
    key = next(n for n in zipfile.ZipFile(base).namelist() if n.endswith("data.pkl"))
    count = struct.pack("<i", 70000)
    assert zipfile.ZipFile(base).read(key).count(count) >= 1
    return {
        "root": root,
        "base": base,
        "truncated": _rewrite_zip(
            base, root / "truncated_record.pt", lambda n, d: d[: len(d) // 3] if n.endswith("/data/0") else d
        ),
        "declares": _rewrite_zip(
            base,
            root / "declares_1e9.pt",
            lambda n, d: d.replace(count, struct.pack("<i", 10**9)) if n.endswith("data.pkl") else d,
        ),
    }


@pytest.mark.parametrize("key", ["truncated", "declares"])
def test_checkpoint_record_smaller_than_its_tensor(short_records, key):
    before = snapshot(short_records["root"])
    with pytest.raises(na.CheckpointError) as info:
        na.load_model(short_records[key])
    _check_message(str(info.value), str(short_records[key]))
    assert "data/" in str(info.value) and "the file holds" in str(info.value)
    assert snapshot(short_records["root"]) == before


def test_checkpoint_records_checked_without_refusing_a_sound_file(short_records):
    from napari_attunet.models.checkpoint import read_checkpoint

    raw = read_checkpoint(short_records["base"])
    assert raw.state_dict["pad"].shape == (70000,)


# ---- memory under the process's own limits (a real RLIMIT_AS, in a subprocess) -----------------

_UNDER_LIMIT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    import napari_attunet as na
    from napari_attunet import limits

    torch.set_num_threads(1)
    headroom = int(sys.argv[1])
    with open("/proc/self/status") as fh:
        used = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
    out = {"free": limits.free_memory(), "headroom": headroom, "cases": {}}
    for kind, path in zip(sys.argv[2::2], sys.argv[3::2]):
        try:
            na.load_model(path) if kind == "checkpoint" else na.io.read(path)
            out["cases"][path] = ["loaded", ""]
        except BaseException as exc:
            out["cases"][path] = [type(exc).__name__, str(exc)]
    print(json.dumps(out))
    """
)


def _sparse_safetensors(path: pathlib.Path, elements: int) -> pathlib.Path:
    """A consistent safetensors file of ``elements`` float32 zeros, written sparse (no disk)."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [elements], "data_offsets": [0, 4 * elements]}}
    ).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + 4 * elements)
    return path


def _gzip_bomb_nrrd(path: pathlib.Path, side: int) -> pathlib.Path:
    """A NRRD of side**3 float32 zeros, gzip-compressed for real (a true bomb: it inflates)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = b"\0" * (16 << 20)
    with open(path, "wb") as fh:
        fh.write(
            f"NRRD0004\ntype: float\ndimension: 3\nsizes: {side} {side} {side}\nencoding: gzip\n"
            "endian: little\n\n".encode()
        )
        left = 4 * side**3
        while left:
            chunk = zeros[: min(left, len(zeros))]
            fh.write(deflate.compress(chunk))
            left -= len(chunk)
        fh.write(deflate.flush())
    return path


def _stats(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file: the 4 GB sparse file is not read whole."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_memory_checks_honour_the_address_space_limit(tmp_path):
    """Under ulimit -v (RLIMIT_AS) with 768 MiB of room, a checkpoint declaring 1e9 float32
    elements (4 GB, a sound sparse file) and a gzip bomb NRRD (a 0.6 MB file inflating to
    512 MiB) are refused with one sentence naming the file and the limit, before the allocator
    is reached; a small scan still reads."""
    headroom = 768 << 20
    big = _sparse_safetensors(tmp_path / "declares_1e9.safetensors", 10**9)
    bomb = _gzip_bomb_nrrd(tmp_path / "bomb.nrrd", 512)
    assert bomb.stat().st_size < 2 << 20 and big.stat().st_blocks * 512 < 1 << 20
    import SimpleITK as sitk

    small = tmp_path / "small.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 16, 16), np.int16)), str(small))
    before = _stats(tmp_path)
    cases = ["checkpoint", str(big), "scan", str(bomb), "scan", str(small)]
    result = subprocess.run(
        [sys.executable, "-c", _UNDER_LIMIT, str(headroom), *cases],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["free"] <= headroom
    kind, message = report["cases"][str(big)]
    assert kind == "CheckpointError", message
    _check_message(message, str(big))
    assert "address-space limit" in message and "allocate" not in message
    kind, message = report["cases"][str(bomb)]
    assert kind == "InputError", message
    _check_message(message, str(bomb))
    assert "address-space limit" in message and "allocate" not in message.lower()
    assert report["cases"][str(small)][0] == "loaded"
    assert _stats(tmp_path) == before

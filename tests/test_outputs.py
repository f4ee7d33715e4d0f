"""Nothing lost: outputs never replace files without --overwrite, inputs with the same name get
distinct outputs, two runs into one folder keep each other's volumes, and a full disk, a
read-only folder or an interrupt leave nothing partial behind (byte for byte, what was there
stays). For the command line and the API; napari's save is in test_writer.py."""

from __future__ import annotations

import contextlib
import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import _fill, _no_staging, _tmpfs, make_model, official_spec, snapshot

import napari_attunet as na
from napari_attunet.cli import main
from napari_attunet.scans import io, outputs

pytestmark = pytest.mark.usefixtures("torch_single_thread")
CLASSES = ["background", "organ"]


def _scan(path: pathlib.Path, seed: int, shape=(12, 16, 16)) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray((rng.random(shape) * 200).astype(np.int16)), str(path))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = make_model(official_spec(3, out_ch=2, features=(2, 4, 8, 16, 32)), seed=5)
    return na.save_model(model, tmp_path_factory.mktemp("ckpt") / "m.safetensors", class_names=CLASSES)


def _predict(*argv) -> tuple[int, list[str]]:
    import io as _io

    err = _io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(_io.StringIO()):
        code = main(["predict", *map(str, argv), "-q"])
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def _rows(folder: pathlib.Path) -> list[dict]:
    with open(folder / "volumes.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---- overwrite ---------------------------------------------------------------------------------


@pytest.mark.parametrize("existing", ["scan_labels.nii.gz", "scan_gate2.nii.gz", "scan_prob_organ.nii.gz"])
def test_existing_outputs_are_never_replaced_without_overwrite(ckpt, tmp_path, existing):
    scan = _scan(tmp_path / "scan.nii.gz", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_bytes(b"manual labels the user drew")
    before = snapshot(out)
    code, lines = _predict(scan, "-c", ckpt, "-o", out, "--attention", "--probabilities")
    assert code == 1 and len(lines) == 1
    assert existing in lines[0] and "--overwrite" in lines[0]
    assert snapshot(out) == before  # nothing else written either
    code, lines = _predict(scan, "-c", ckpt, "-o", out, "--attention", "--probabilities", "--overwrite")
    assert code == 0, lines
    assert io.read(out / "scan_labels.nii.gz").array.shape == (12, 16, 16)
    assert io.read(out / existing).array.shape == (12, 16, 16)
    _no_staging(out)


def test_api_write_refuses_then_replaces_with_overwrite(tmp_path):
    target = tmp_path / "labels.nii.gz"
    target.write_bytes(b"keep me")
    with pytest.raises(outputs.OutputExists, match="overwrite=True"):
        io.write(target, np.ones((4, 5, 6), np.uint8))
    assert target.read_bytes() == b"keep me"
    io.write(target, np.ones((4, 5, 6), np.uint8), overwrite=True)
    assert io.read(target).array.sum() == 120
    _no_staging(tmp_path)


# ---- names -------------------------------------------------------------------------------------


def test_same_stem_from_two_folders_gets_two_outputs(ckpt, tmp_path):
    a = _scan(tmp_path / "site_a" / "ct.nii.gz", 1)
    b = _scan(tmp_path / "site_b" / "ct.nii.gz", 2)
    out = tmp_path / "out"
    code, lines = _predict(a, b, "-c", ckpt, "-o", out)
    assert code == 0, lines
    la, lb = out / "site_a_ct_labels.nii.gz", out / "site_b_ct_labels.nii.gz"
    model = na.load_model(ckpt)
    for scan, labels in ((a, la), (b, lb)):
        volume = io.read(scan)
        assert np.array_equal(io.read(labels).array, na.predict(volume, model).labels())
    rows = _rows(out)
    assert {r["scan"] for r in rows} == {"site_a_ct", "site_b_ct"}
    assert {r["path"] for r in rows} == {str(a), str(b)}


def test_unique_names():
    names = outputs.unique_names(
        [
            "/x/a/ct.nii.gz",
            "/x/b/ct.nii.gz",
            "/y/a/ct.nii.gz",
            "/x/mr.nii.gz",
            "/x/mr.nii.gz",
            "/z/scan.nii.gz",
            "/z/scan.nrrd",
            "/w/dicom",
        ],
        io.stem,
    )
    assert names == ["x_a_ct", "b_ct", "y_a_ct", "mr", "mr_2", "scan_nii_gz", "scan_nrrd", "dicom"]


# ---- volumes.csv -------------------------------------------------------------------------------


def test_a_second_run_keeps_the_first_runs_rows(ckpt, tmp_path):
    out = tmp_path / "out"
    one, two = _scan(tmp_path / "one.nii.gz", 1), _scan(tmp_path / "two.nii.gz", 2)
    assert _predict(one, "-c", ckpt, "-o", out)[0] == 0
    first = _rows(out)
    assert _predict(two, "-c", ckpt, "-o", out)[0] == 0
    rows = _rows(out)
    assert [r for r in rows if r["scan"] == "one"] == first
    assert {r["scan"] for r in rows} == {"one", "two"}
    # a re-run of one scan with --overwrite replaces its rows, not the other's
    assert _predict(one, "-c", ckpt, "-o", out, "--overwrite")[0] == 0
    again = _rows(out)
    assert len(again) == len(rows) and [r for r in again if r["scan"] == "two"] == [
        r for r in rows if r["scan"] == "two"
    ]


def test_two_processes_into_one_folder_keep_both_tables(ckpt, tmp_path):
    out = tmp_path / "out"
    scans = [_scan(tmp_path / f"p{k}" / f"case{k}.nii.gz", k) for k in range(2)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "napari_attunet.cli",
                "predict",
                str(s),
                "-c",
                str(ckpt),
                "-o",
                str(out),
                "-q",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in scans
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    rows = _rows(out)
    assert {r["path"] for r in rows} == {str(s) for s in scans}
    assert len(rows) == 2 * (len(CLASSES) - 1)
    for k in range(2):
        assert (out / f"case{k}_labels.nii.gz").is_file()
    _no_staging(out)


# ---- full disk, read-only folder, interrupt ----------------------------------------------------


def test_cli_on_a_full_disk_leaves_nothing_partial(ckpt, tmp_path):
    scan = _scan(tmp_path / "big.nii.gz", 3, shape=(24, 48, 48))
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "volumes.csv").write_text("scan,class,volume_ml,path\nold,organ,1.000,/old\n")
        (disk / "notes.txt").write_text("the user's notes")
        _fill(disk, 24 << 10)
        before = snapshot(disk)
        code, lines = _predict(scan, "-c", ckpt, "-o", disk, "--probabilities", "--attention")
        assert code == 1 and len(lines) == 1, lines
        assert "the disk is full" in lines[0] and "nothing was written" in lines[0]
        assert "[Errno" not in lines[0]
        assert snapshot(disk) == before
        _no_staging(disk)


def test_read_only_output_folder_is_one_sentence(ckpt, tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz", 1)
    with _tmpfs(tmp_path / "ro", "64k", "ro") as ro:
        code, lines = _predict(scan, "-c", ckpt, "-o", ro)
        assert code == 1 and len(lines) == 1, lines
        assert str(ro) in lines[0] and "-o/--output" in lines[0]
        assert "read-only" in lines[0] and "[Errno" not in lines[0]
        assert snapshot(ro) == {}
        with pytest.raises(outputs.OutputError, match="read-only"):
            io.write(ro / "labels.nii.gz", np.ones((4, 4, 4), np.uint8))


def test_interrupt_leaves_all_or_nothing(ckpt, tmp_path):
    """SIGINT at several moments of a run: the user's file stays, and a scan's outputs are
    either all there, whole, or not there at all."""
    scan = _scan(tmp_path / "scan.nii.gz", 4, shape=(32, 64, 64))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for k, delay in enumerate((1.5, 3.0, 4.5, 6.0)):
        out = tmp_path / f"out{k}"
        out.mkdir()
        (out / "mine.nii.gz").write_bytes(b"the user's file")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "napari_attunet.cli",
                "predict",
                str(scan),
                "-c",
                str(ckpt),
                "-o",
                str(out),
                "-q",
                "--probabilities",
                "--attention",
                "--uncertainty",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=300)
        # 130: main() caught it; -SIGINT: it came during start-up, before any output existed
        assert code in (0, 130, -signal.SIGINT), proc.stderr.read()
        assert (out / "mine.nii.gz").read_bytes() == b"the user's file"
        _no_staging(out)
        written = sorted(p.name for p in out.iterdir() if p.name != "mine.nii.gz")
        if code != 0:
            assert written in ([], sorted([*_expected(), "volumes.csv"]), _expected()), written
        for name in written:
            if name.endswith(".nii.gz"):
                assert io.read(out / name).array.shape == (32, 64, 64)


def _expected() -> list[str]:
    return sorted(
        [
            "scan_labels.nii.gz",
            "scan_gate1.nii.gz",
            "scan_gate2.nii.gz",
            "scan_gate3.nii.gz",
            "scan_uncertainty.nii.gz",
            "scan_prob_background.nii.gz",
            "scan_prob_organ.nii.gz",
        ]
    )


def test_a_run_killed_between_the_links_of_a_set_is_redone_whole(ckpt, tmp_path):
    """SIGKILL between two hard links of one scan's files (a test hook holds the commit there):
    part of the set is in place. The next run removes exactly those files (the very files of the
    dead run's staging folder, by inode), never a file of the same name someone else put there,
    and writes the whole set without --overwrite (it once said "already exists")."""
    scan = _scan(tmp_path / "scan.nii.gz", 4)
    argv = [scan, "-c", ckpt, "--probabilities", "--attention", "--uncertainty"]
    reference = tmp_path / "reference"
    assert _predict(*argv, "-o", reference) == (0, [])
    out, flag = tmp_path / "out", tmp_path / "paused"
    out.mkdir()
    (out / "mine.nii.gz").write_bytes(b"the user's file")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env[outputs.PAUSE_SETTING] = f"2:{flag}"
    command = [sys.executable, "-m", "napari_attunet.cli", "predict", *map(str, argv), "-o", str(out), "-q"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (flag.exists() and flag.read_text().isdigit()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.1)
    assert int(flag.read_text()) == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    linked = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != "mine.nii.gz")
    (staging,) = [p for p in out.iterdir() if p.name.startswith(outputs.STAGING_PREFIX)]
    assert len(linked) == 2 and set(linked) < set(_expected())  # part of the set, no volumes.csv
    # a name of the set not yet in place, taken by someone else meanwhile: refused and kept
    other = sorted(set(_expected()) - set(linked))[0]
    (out / other).write_bytes(b"someone else's file")
    code, lines = _predict(*argv, "-o", out)
    assert code == 1 and len(lines) == 1 and other in lines[0] and "already exists" in lines[0]
    assert (out / other).read_bytes() == b"someone else's file"
    assert not staging.exists() and not any((out / name).exists() for name in linked)  # ours: removed
    (out / other).unlink()
    assert _predict(*argv, "-o", out) == (0, [])
    _no_staging(out)
    assert (out / "mine.nii.gz").read_bytes() == b"the user's file"
    written = sorted(p.name for p in out.iterdir() if p.name != "mine.nii.gz")
    assert written == sorted([*_expected(), "volumes.csv"])
    for name in _expected():
        assert np.array_equal(io.read(out / name).array, io.read(reference / name).array), name
    assert _rows(out) == _rows(reference)


def test_a_name_taken_meanwhile_by_another_process_is_never_replaced(tmp_path):
    """The check before a run can be outrun by another process: the move into place itself
    refuses (a hard link fails on an existing name) and takes back what it had moved."""
    with (
        pytest.raises(outputs.OutputExists, match="was left as it is") as info,
        outputs.staged(tmp_path) as stage,
    ):
        for name in ("a_labels.nii.gz", "b_labels.nii.gz"):
            io.write_staged(stage, name, np.ones((4, 4, 4), np.uint8))
        (tmp_path / "b_labels.nii.gz").write_bytes(b"the other process's mask")
    assert "b_labels.nii.gz" in str(info.value)
    assert snapshot(tmp_path) == {"b_labels.nii.gz": b"the other process's mask"}
    _no_staging(tmp_path)


def test_volumes_table_on_a_full_disk_keeps_the_old_table(tmp_path):
    with _tmpfs(tmp_path / "disk", "128k") as disk:
        outputs.merge_volumes(disk / "volumes.csv", [("one", "organ", "1.000", "/data/one")])
        before = (disk / "volumes.csv").read_bytes()
        _fill(disk, 0)
        rows = [(f"s{k}", "organ", "2.000", f"/data/s{k}") for k in range(2000)]
        with pytest.raises(outputs.OutputError, match="disk is full"):
            outputs.merge_volumes(disk / "volumes.csv", rows)
        assert (disk / "volumes.csv").read_bytes() == before
        _no_staging(disk)

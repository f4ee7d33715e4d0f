"""Cohorts under faults: a scan is done when its files *and* its rows are in place. A worker
killed while it merged volumes.csv, or while it predicted, a second cohort into the same folder,
a scheduler that goes away: the run finishes or says in one sentence what did not, nothing
partial is left or reported done, and a re-run resumes. Output folders that hold something else
are named and left untouched. Real LocalClusters, real SIGKILL, real schedulers."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import RAS, _check_message, make_model, official_spec, sitk_image, snapshot

import napari_attunet as na
from napari_attunet.cli import main
from napari_attunet.phantom import make_phantom

psutil = pytest.importorskip("psutil")
pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
pytestmark = pytest.mark.usefixtures("torch_single_thread")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    model = make_model(official_spec(3, out_ch=3, features=(2, 4, 8, 16, 32)), seed=8)
    ckpt = na.save_model(model, root / "m.safetensors", class_names=["background", "organ", "lesion"])
    scans = []
    for k in range(4):
        image, _ = make_phantom((16, 20, 24), seed=k)
        path = root / "scans" / f"case{k}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        sitk.WriteImage(
            sitk_image((image * 300 - 100).astype(np.int16), (0.9, 0.9, 2.0), (1.0 * k, -3.0, 5.0), RAS),
            str(path),
        )
        scans.append(path)
    reference = root / "reference"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["predict", *map(str, scans), "-c", str(ckpt), "-o", str(reference), "-q"]) == 0
    return dict(root=root, ckpt=ckpt, scans=scans, reference=reference)


def _rows(folder: pathlib.Path) -> list[list[str]]:
    table = list(csv.reader(open(folder / "volumes.csv", newline="")))
    return table[:1] + sorted(table[1:], key=lambda r: (r[-1], r[1]))


def _hidden(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _cli(*argv, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "napari_attunet.cli", "predict", *map(str, argv), "-q"],
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _workers(proc: subprocess.Popen, count: int, timeout: float = 120) -> list:
    """The Dask worker processes a command started (its multiprocessing children)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "spawn_main" in " ".join(c.cmdline())
        ]
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError("the workers never started")


def _wait_for(check, timeout: float = 180, proc: subprocess.Popen | None = None, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(every)


def _labels(folder: pathlib.Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- resume checks the table; what killed processes left is removed ------------------------------


def test_resume_adds_missing_rows_and_removes_what_dead_processes_left(cohort, tmp_path):
    c = cohort
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["predict", *map(str, c["scans"]), "-c", str(c["ckpt"]), "-o", str(out), "-q"]) == 0
    table = _rows(out)
    kept = [r for r in table if not r[-1].endswith("case1.nii.gz")]
    with open(out / "volumes.csv", "w", newline="") as fh:  # files there, rows not: a killed merge
        csv.writer(fh).writerows(kept)
    host, dead = socket.gethostname(), _dead_pid()
    (out / f".attunet-{dead}-{host}-abcd1234").mkdir()
    (out / f".attunet-{dead}-{host}-abcd1234" / "case1_labels.nii.gz").write_bytes(b"half")
    (out / f".case1.zarr.partial-{dead}-{host}-1234abcd").mkdir()
    live = out / f".attunet-{os.getpid()}-{host}-live0000"  # a live process's: left alone
    live.mkdir()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}

    code = main(
        ["predict", *map(str, c["scans"]), "-c", str(c["ckpt"]), "-o", str(out), "-q"]
        + ["--scheduler", "local:2"]
    )
    assert code == 0
    assert _rows(out) == table  # the rows are back, counted from the labels file
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == stamps  # nothing predicted again
    assert _hidden(out) == [live.name]
    live.rmdir()


# ---- a worker killed -----------------------------------------------------------------------------


@contextlib.contextmanager
def _table_locked(folder: pathlib.Path):
    """Hold the lock volumes.csv is merged under: workers stop right before their merge."""
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_a_worker_killed_while_it_merged_volumes_csv(cohort, tmp_path):
    """Its files are in place, its rows are not: Dask's retry of the task recognises the files
    and adds the rows (no 'already exists'), and nothing hidden is left."""
    c = cohort
    scans = c["scans"][:2]
    out = tmp_path / "out"
    out.mkdir()
    with _table_locked(out):
        proc = _cli(*scans, "-c", c["ckpt"], "-o", out, "--scheduler", "local:2")
        workers = _workers(proc, 2)
        _wait_for(lambda: all((out / f"{s.name[:-7]}_labels.nii.gz").exists() for s in scans), proc=proc)
        time.sleep(0.5)  # both workers wait for the lock now
        workers[0].send_signal(signal.SIGKILL)
        time.sleep(1.0)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and err.strip() == "", err
    reference = _rows(c["reference"])
    assert _rows(out) == reference[:1] + [r for r in reference[1:] if r[0] in ("case0", "case1")]
    expected = {k: v for k, v in _labels(c["reference"]).items() if k.startswith(("case0", "case1"))}
    got = _labels(out)
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert np.array_equal(got[name], array), name
    assert _hidden(out) == []


def test_a_worker_killed_between_the_links_of_a_scan(cohort, tmp_path):
    """A worker SIGKILLed between two hard links of its scan's files (a test hook holds it
    there) leaves half the set in place: Dask's retry of the task removes those very files (the
    dead worker's staging folder holds them) and writes the set whole; the cohort finishes
    without --overwrite (it once said "already exists"), every file and row once."""
    from napari_attunet.scans import outputs

    c = cohort
    scans = c["scans"][:2]
    out, flag = tmp_path / "out", tmp_path / "paused"
    env = {**ENV, outputs.PAUSE_SETTING: f"1:{flag}"}
    proc = _cli(*scans, "-c", c["ckpt"], "-o", out, "--scheduler", "local:2", "--uncertainty", env=env)
    _wait_for(lambda: flag.exists() and flag.read_text().isdigit(), proc=proc)
    worker = int(flag.read_text())
    assert worker in [w.pid for w in _workers(proc, 2)]
    (staging,) = out.glob(f".attunet-{worker}-*")  # its set, each file a hard link of the one in place
    staged = [p for p in staging.iterdir() if p.name.endswith(".nii.gz")]
    linked = [p for p in staged if (out / p.name).exists() and (out / p.name).samefile(p)]
    assert len(staged) == 2 and len(linked) == 1  # half its set: the labels or the uncertainty
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and err.strip() == "", err
    reference = _rows(c["reference"])
    assert _rows(out) == reference[:1] + [r for r in reference[1:] if r[0] in ("case0", "case1")]
    names = sorted(f"case{k}_{kind}.nii.gz" for k in (0, 1) for kind in ("labels", "uncertainty"))
    got = _labels(out)
    assert sorted(got) == names
    for name, array in _labels(c["reference"]).items():
        if name in got:
            assert np.array_equal(got[name], array), name
    assert _hidden(out) == []


def test_a_worker_killed_while_it_predicted_then_a_rerun_resumes(cohort, tmp_path):
    c = cohort
    out = tmp_path / "out"
    proc = _cli(*c["scans"], "-c", c["ckpt"], "-o", out, "--scheduler", "local:2")
    workers = _workers(proc, 2)
    _wait_for(lambda: out.exists() and any(out.glob("*_labels.nii.gz")), proc=proc)
    workers[1].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode in (0, 1) and len(lines) <= 1, err  # finished on the other, or one line
    if proc.returncode:
        _check_message(lines[0], "case")
    done = {p.name for p in out.glob("*_labels.nii.gz")}
    assert _hidden(out) == []
    for row in _rows(out)[1:]:  # a scan reported done has its file
        assert f"{pathlib.Path(row[-1]).name[:-7]}_labels.nii.gz" in done
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}

    code = main(
        ["predict", *map(str, c["scans"]), "-c", str(c["ckpt"]), "-o", str(out), "-q"]
        + ["--scheduler", "local:2"]
    )
    assert code == 0
    assert _rows(out) == _rows(c["reference"])
    assert {
        k: v for k, v in ((p.name, p.stat().st_mtime_ns) for p in out.glob("*.nii.gz")) if k in stamps
    } == stamps
    for name, array in _labels(c["reference"]).items():
        assert np.array_equal(_labels(out)[name], array), name
    assert _hidden(out) == []


def test_two_cohorts_into_one_folder_at_once(cohort, tmp_path):
    c = cohort
    out = tmp_path / "out"
    first = _cli(*c["scans"], "-c", c["ckpt"], "-o", out, "--scheduler", "local:1")
    second = _cli(*reversed(c["scans"]), "-c", c["ckpt"], "-o", out, "--scheduler", "local:1")
    results = [p.communicate(timeout=300) for p in (first, second)]
    for proc, (_, err) in zip((first, second), results, strict=True):
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 0 and lines == [], err  # both finish
    assert _rows(out) == _rows(c["reference"])  # every row, once
    for name, array in _labels(c["reference"]).items():
        assert np.array_equal(_labels(out)[name], array), name
    assert _hidden(out) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_scheduler_that_goes_away(cohort, tmp_path):
    c = cohort
    port = _free_port()
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen(
        dask + ["--port", str(port), "--no-dashboard"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(  # no nanny: the worker is this process, so it can be paused
        [sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}"]
        + ["--nthreads", "1", "--no-dashboard", "--no-nanny"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = tmp_path / "out"
    try:
        proc = _cli(*c["scans"], "-c", c["ckpt"], "-o", out, "--scheduler", f"tcp://127.0.0.1:{port}")
        _wait_for(lambda: out.exists() and any(out.glob("*_labels.nii.gz")), proc=proc, every=0.005)
        # the worker paused at once, so scans are left when the scheduler goes (on a quiet machine
        # the tiny cohort would otherwise finish before the kill lands)
        worker.send_signal(signal.SIGSTOP)
        scheduler.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
    finally:
        for p in (scheduler, worker):
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, err
    _check_message(lines[0], f"tcp://127.0.0.1:{port}")
    assert "went away" in lines[0] and "run the same command again" in lines[0]
    kept = {p.name: p.read_bytes() for p in out.glob("*_labels.nii.gz")}
    assert 0 < len(kept) < len(c["scans"])
    # only the paused (then killed) worker's staging is there; the re-run sweeps it
    assert all(f"-{worker.pid}-" in name for name in _hidden(out)), _hidden(out)

    assert (
        main(
            ["predict", *map(str, c["scans"]), "-c", str(c["ckpt"]), "-o", str(out), "-q"]
            + ["--scheduler", "local:1"]
        )
        == 0
    )
    assert {k: (out / k).read_bytes() for k in kept} == kept  # finished outputs kept, not redone
    assert _rows(out) == _rows(c["reference"]) and _hidden(out) == []


# ---- E: output folders that hold something else ------------------------------------------------


@pytest.mark.parametrize("what", ["foreign zarr", "plain file"])
def test_a_store_name_taken_by_something_else(cohort, tmp_path, capsys, what):
    c = cohort
    out = tmp_path / "stores"
    out.mkdir()
    taken = out / "case0.zarr"
    if what == "foreign zarr":
        other = zarr.open_group(str(taken), mode="w")
        other.create_array("image", shape=(4, 4), dtype="uint8")[:] = 7
        other.attrs["tool"] = "someone else's"
    else:
        taken.write_text("not a store")
    before = snapshot(out)
    code = main(
        ["predict", str(c["scans"][0]), "-c", str(c["ckpt"]), "-o", str(out), "--format", "zarr", "-q"]
    )
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, captured.err
    _check_message(lines[0], str(taken))
    assert "in the way" in lines[0] and "--overwrite" in lines[0] and "skipped" not in captured.out
    assert snapshot(out) == before
